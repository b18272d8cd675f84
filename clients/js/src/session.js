// One device's side of the protocol, sans-IO: no sockets, no clock. The
// driver (client.js) feeds it `handleConnected`, `handleMessage`,
// `handleDisconnected` and `handleTimeout(now)`, issues commands with
// `command(now, body)`, and after each input drains `pollTransmit()`
// (messages to send), `pollEvent()` (for the app) and `pollCompletion()`
// (command results); it sleeps until `pollTimeout()`.
//
// A port of the Rust client session (crates/invitation-core/src/session):
// request ids reused for retries, events deduplicated by seq, gaps filled
// by waiting then by `sync`, snapshots merged, a fallback ring timer per
// ringing call, receipts for invitations that ring. Everything it holds is
// bounded (pending commands, events held ahead of a gap, calls remembered
// as ended, abandoned invites).

/** Defaults, the Rust client's (SessionConfig). Milliseconds. */
export const DEFAULT_SESSION_CONFIG = Object.freeze({
  minRingLeftMs: 5000,
  fallbackMarginMs: 5000,
  reorderBuffer: 64,
  rememberedCalls: 1024,
  commandRetryMs: 2000,
  commandRetryMaxMs: 16000,
  gapTimeoutMs: 1000,
  syncRetryMs: 2000,
  commandDeadlineMs: 30000,
  sendReceipts: true,
  maxPending: 256,
});

const ABANDONED_KEPT = 64;

/** Timer keys that need a live link (disarmed when it drops). */
function needsLink(key) {
  return key.startsWith('retry:') || key === 'gap' || key === 'syncRetry';
}

export class Session {
  /**
   * @param {{user: string, device: string, prefix?: string, config?: object}} opts
   */
  constructor({ user, device, prefix = '', config = {} }) {
    this.config = { ...DEFAULT_SESSION_CONFIG, ...config };
    this.user = user;
    this.device = device;
    this.prefix = String(prefix).replace(/[^A-Za-z0-9]/g, '').slice(0, 32);
    /** Highest seq applied in order (null: none yet). */
    this.lastSeq = null;
    this.awaitingSync = false;
    this.helloId = null;
    this.welcomed = false;
    /** The server's error answer to this connection's hello, if it refused it. */
    this.refusal = null;
    /** Events held ahead of a gap: seq -> event (null: an unknown type). */
    this.ahead = new Map();
    /** call id -> {state, caller, customData, mine, outcomes: Map, cancelConfirmed, delivered: Set} */
    this.calls = new Map();
    /** Calls over on this device: call id -> the seq its end belongs to (insertion order = age). */
    this.ended = new Map();
    this.applyingSeq = null;
    /** request id -> {body, n, backoff, internal} */
    this.pending = new Map();
    /** issue number -> request id (Map keeps issue order). */
    this.pendingOrder = new Map();
    this.abandoned = [];
    this.disowned = [];
    this.nextRequest = 1;
    this.connected = false;
    /** key -> due time (ms) */
    this.timers = new Map();
    this.transmit = [];
    this.events = [];
    this.completions = [];
    this.duplicates = 0;
  }

  // ----- inputs ---------------------------------------------------------

  /** The link is up: queues hello (resuming) and every unanswered command, same ids. */
  handleConnected(now, token) {
    this.connected = true;
    this.timers.delete('gap');
    this.timers.delete('syncRetry');
    this.awaitingSync = false;
    const hello = { type: 'hello', device: this.device, token, last_seq: this.lastSeq ?? undefined };
    const id = this.freshId();
    this.helloId = id;
    this.welcomed = false;
    this.refusal = null;
    this.transmit.push({ id, body: hello });
    for (const [n, rid] of this.pendingOrder) {
      const p = this.pending.get(rid);
      if (!p) continue;
      this.transmit.push({ id: rid, body: p.body });
      p.backoff = this.config.commandRetryMs;
      this.timers.set(`retry:${n}`, now + p.backoff);
    }
  }

  /** The link dropped: queued messages are discarded (resent from the pending table). */
  handleDisconnected() {
    if (!this.connected) return;
    this.connected = false;
    this.transmit = [];
    this.ahead.clear();
    for (const key of [...this.timers.keys()]) if (needsLink(key)) this.timers.delete(key);
    this.events.push({ type: 'Connection', state: 'reconnecting' });
  }

  /** Issues a call command (or renew); returns its request id. */
  command(now, body) {
    return this.issue(now, body, false);
  }

  /** The app gave up on command `id`: never sent again; an invite the server took is canceled. */
  abandon(id) {
    this.giveUp(id);
  }

  /** Queues a protocol ping (the driver's heartbeat). */
  ping() {
    if (this.connected) this.transmit.push({ id: this.freshId(), body: { type: 'ping' } });
  }

  /** A decoded server message (protocol.js). */
  handleMessage(now, m) {
    switch (m.type) {
      case 'welcome':
        this.welcomed = true;
        if (m.resumed) {
          this.awaitingSync = false;
          this.timers.delete('syncRetry');
          if (this.lastSeq === null) this.lastSeq = m.seq;
        } else {
          this.awaitingSync = true;
          this.armTimer('syncRetry', now + this.config.syncRetryMs);
        }
        this.events.push({ type: 'Connection', state: 'connected', resumed: m.resumed, user: m.user });
        break;
      case 'reply':
        this.onReply(now, m.re, { ok: true, result: m.result });
        break;
      case 'error':
        this.onError(now, m);
        break;
      case 'event':
        if (m.re !== undefined) {
          this.applyingSeq = m.seq;
          this.onReply(now, m.re, { ok: true, result: m.event === null ? { type: 'done' } : (m.result ?? { type: 'done' }) });
          this.applyingSeq = null;
        }
        this.onEvent(now, m.seq, m.event);
        break;
      case 'sync':
        this.onSync(now, m);
        break;
      case 'pong':
        if (m.seq !== undefined && !this.awaitingSync && m.seq > (this.lastSeq ?? 0)) this.openGap(now);
        break;
      default:
        break; // closing (the driver acts on it), unknown types
    }
  }

  /** Fires the timers due at `now`, earliest first (ties in the order armed). */
  handleTimeout(now) {
    const due = [...this.timers.entries()].filter(([, at]) => at <= now).sort((a, b) => a[1] - b[1]);
    for (const [key, at] of due) {
      if (this.timers.get(key) !== at) continue; // re-armed or disarmed meanwhile
      this.timers.delete(key);
      if (key.startsWith('deadline:')) this.fireDeadline(Number(key.slice(9)));
      else if (key.startsWith('retry:')) this.fireRetry(now, Number(key.slice(6)));
      else if (key === 'gap') this.fireGap(now);
      else if (key === 'syncRetry') this.fireSyncRetry(now);
      else if (key.startsWith('fallback:')) this.fireFallback(key.slice(9));
    }
  }

  // ----- outputs --------------------------------------------------------

  /** The next message to send: `{id, body}` (encode with protocol.encodeClientMessage). */
  pollTransmit() {
    return this.transmit.shift();
  }

  /** The next event for the app. */
  pollEvent() {
    while (this.events.length) {
      const e = this.events.shift();
      if (e.callId === undefined || !this.disowned.includes(e.callId)) return e;
    }
    return undefined;
  }

  /** The next command result: `[requestId, {ok, result} | {ok: false, error}]`. */
  pollCompletion() {
    return this.completions.shift();
  }

  /** The earliest armed timer (ms), or undefined. */
  pollTimeout() {
    let min;
    for (const at of this.timers.values()) if (min === undefined || at < min) min = at;
    return min;
  }

  /** True while an incoming call rings on this device. */
  isRinging(callId) {
    return this.calls.get(callId)?.state === 'ringing';
  }

  // ----- commands -------------------------------------------------------

  freshId() {
    return `${this.prefix}r${this.nextRequest++}`;
  }

  armTimer(key, at) {
    if (this.connected || !needsLink(key)) this.timers.set(key, at);
  }

  issue(now, body, internal) {
    const n = this.nextRequest;
    const id = this.freshId();
    this.pending.set(id, { body, n, backoff: this.config.commandRetryMs, internal });
    this.pendingOrder.set(n, id);
    this.timers.set(`deadline:${n}`, now + this.config.commandDeadlineMs);
    if (this.connected) {
      this.transmit.push({ id, body });
      this.armTimer(`retry:${n}`, now + this.config.commandRetryMs);
    }
    return id;
  }

  fireRetry(now, n) {
    const id = this.pendingOrder.get(n);
    const p = id && this.pending.get(id);
    if (!p) return;
    this.transmit.push({ id, body: p.body });
    p.backoff = Math.min(p.backoff * 2, this.config.commandRetryMaxMs);
    this.armTimer(`retry:${n}`, now + p.backoff);
  }

  fireDeadline(n) {
    const id = this.pendingOrder.get(n);
    if (!id) return;
    const p = this.giveUp(id);
    if (p && !p.internal) this.completions.push([id, { ok: false, error: { code: 'timed_out', message: 'no answer before the command deadline' } }]);
  }

  forget(n) {
    this.pendingOrder.delete(n);
    this.timers.delete(`retry:${n}`);
    this.timers.delete(`deadline:${n}`);
  }

  giveUp(id) {
    const p = this.pending.get(id);
    if (!p) return undefined;
    this.pending.delete(id);
    this.forget(p.n);
    this.transmit = this.transmit.filter((m) => m.id !== id);
    if (p.body.type === 'invite') {
      if (this.abandoned.length >= ABANDONED_KEPT) this.abandoned.shift();
      this.abandoned.push([id, p.body]);
    }
    return p;
  }

  disown(now, callId, joined) {
    if (this.disowned.includes(callId)) return;
    if (this.disowned.length >= ABANDONED_KEPT) this.disowned.shift();
    this.disowned.push(callId);
    this.finish(callId);
    this.issue(now, { type: joined ? 'hang_up' : 'cancel', call_id: callId }, true);
  }

  isAbandonedInvite(callees) {
    const i = this.abandoned.findIndex(([, req]) => req.callees.length === callees.length
      && req.callees.every((c) => callees.some((u) => u.id === c)));
    if (i < 0) return false;
    this.abandoned.splice(i, 1);
    return true;
  }

  onReply(now, re, outcome) {
    const p = this.pending.get(re);
    if (!p) {
      const i = this.abandoned.findIndex(([id]) => id === re);
      if (i >= 0) {
        this.abandoned.splice(i, 1);
        if (outcome.ok && outcome.result.type === 'invited') this.disown(now, outcome.result.call_id, false);
        if (outcome.ok && outcome.result.type === 'joined') this.disown(now, outcome.result.call_id, true);
      }
      return;
    }
    this.pending.delete(re);
    this.forget(p.n);
    if (p.internal) {
      if (p.body.type === 'cancel' && !outcome.ok && outcome.error.code === 'ended' && outcome.error.reason === 'accepted') {
        this.issue(now, { type: 'hang_up', call_id: p.body.call_id }, true);
      }
      return;
    }
    if (outcome.ok) this.onSuccess(now, p.body, outcome.result);
    this.completions.push([re, outcome]);
  }

  onError(now, m) {
    if (m.re === undefined) return;
    if (m.re === this.helloId) {
      if (!this.welcomed) this.refusal = m;
      return;
    }
    this.onReply(now, m.re, {
      ok: false,
      error: { code: m.code, message: m.message, reason: m.reason, retry_after_ms: m.retry_after_ms },
    });
  }

  glareInvitePending(caller) {
    for (const p of this.pending.values()) {
      if (p.body.type === 'invite' && p.body.callees.length === 1 && p.body.callees[0] === caller) return true;
    }
    return false;
  }

  // ----- sequence -------------------------------------------------------

  onEvent(now, seq, event) {
    if (this.awaitingSync) {
      if (this.ahead.size < this.config.reorderBuffer) this.ahead.set(seq, event);
      return;
    }
    const last = this.lastSeq ?? 0;
    if (seq <= last) {
      this.duplicates += 1;
      return;
    }
    if (seq > last + 1) {
      if (this.ahead.size >= this.config.reorderBuffer) {
        this.ahead.clear();
        this.timers.delete('gap');
        this.requestSync(now);
      } else {
        this.ahead.set(seq, event);
        this.openGap(now);
      }
      return;
    }
    if (event) {
      this.applyingSeq = seq;
      this.apply(now, event);
      this.applyingSeq = null;
    }
    this.lastSeq = seq;
    this.applyAhead(now);
  }

  applyAhead(now) {
    for (;;) {
      if (this.ahead.size === 0) break;
      const first = Math.min(...this.ahead.keys());
      const next = (this.lastSeq ?? 0) + 1;
      if (first < next) {
        this.ahead.delete(first);
        this.duplicates += 1;
      } else if (first === next) {
        const event = this.ahead.get(first);
        this.ahead.delete(first);
        if (event) {
          this.applyingSeq = next;
          this.apply(now, event);
          this.applyingSeq = null;
        }
        this.lastSeq = next;
      } else {
        break;
      }
    }
    if (this.ahead.size === 0) this.timers.delete('gap');
  }

  openGap(now) {
    if (!this.timers.has('gap')) this.armTimer('gap', now + this.config.gapTimeoutMs);
  }

  fireGap(now) {
    this.ahead.clear();
    this.requestSync(now);
  }

  fireSyncRetry(now) {
    if (this.awaitingSync) {
      this.awaitingSync = false;
      this.requestSync(now);
    }
  }

  requestSync(now) {
    if (this.awaitingSync) return;
    this.awaitingSync = true;
    this.armTimer('syncRetry', now + this.config.syncRetryMs);
    this.transmit.push({ id: this.freshId(), body: { type: 'sync' } });
  }

  // ----- sync -----------------------------------------------------------

  onSync(now, sync) {
    if (!this.awaitingSync && this.lastSeq !== null && sync.seq < this.lastSeq) {
      this.duplicates += 1;
      return;
    }
    this.awaitingSync = false;
    this.timers.delete('syncRetry');
    this.timers.delete('gap');
    this.lastSeq = sync.seq;
    const live = new Set(sync.calls.map((c) => c.call_id));
    const decidedLater = new Set();
    for (const [seq, e] of this.ahead) if (seq > sync.seq && e) decidedLater.add(e.call_id);
    const gone = [...this.calls.keys()].filter((id) => !live.has(id) && !decidedLater.has(id)).sort();
    for (const callId of gone) {
      const ended = sync.ended.find((e) => e.call_id === callId);
      this.endFromSync(callId, ended ? ended.reason : 'failed', ended ? ended.outcomes : [], ended?.custom_data);
    }
    for (const snap of sync.calls) this.mergeSnapshot(now, snap, sync.seq);
    this.events.push({ type: 'Resynced', liveCalls: sync.calls.length });
    this.applyAhead(now);
    if (this.ahead.size) this.openGap(now);
  }

  endFromSync(callId, reason, outcomes, data) {
    const call = this.calls.get(callId);
    if (!call) return;
    if (call.state === 'ringing' || call.state === 'silent') {
      this.incomingEnded(callId, reason === 'hung_up' || reason === 'accepted' ? 'answered_elsewhere' : reason, undefined, data);
    } else if (call.state === 'outgoing') {
      for (const [callee, r] of [...call.outcomes]) {
        if (r !== null) continue;
        const o = outcomes.find((x) => x.callee === callee);
        if (o) this.calleeOutcome(callId, callee, o.reason, o.custom_data);
      }
      this.finish(callId);
      this.events.push({ type: 'CallEnded', callId, reason, customData: data });
    } else {
      this.finish(callId);
      this.events.push({ type: 'CallEnded', callId, reason, customData: data });
    }
  }

  mergeSnapshot(now, snap, seq) {
    const endedAt = this.ended.get(snap.call_id);
    const ringsAgain = snap.role === 'callee' && snap.state === 'ringing' && snap.ring_remaining_ms > 0
      && (endedAt === undefined || seq >= endedAt);
    if (endedAt !== undefined && !ringsAgain) return;
    const call = this.calls.get(snap.call_id);
    if (snap.role === 'callee') {
      if (snap.state === 'ringing' && !call) {
        this.apply(now, {
          type: 'incoming_call', call_id: snap.call_id, caller: snap.caller, call_type: snap.call_type,
          callees: snap.callees, custom_data: snap.custom_data, ring_remaining_ms: snap.ring_remaining_ms,
          ring_timeout_ms: snap.ring_timeout_ms,
        });
      } else if (snap.state === 'accepted' && call && (call.state === 'ringing' || call.state === 'silent')) {
        const data = snap.outcomes.find((o) => o.custom_data !== undefined)?.custom_data;
        this.incomingEnded(snap.call_id, 'accepted', snap.device, data);
      } else if (snap.state === 'accepted' && !call && snap.device === this.device) {
        this.calls.set(snap.call_id, newCall('in_call', snap.caller, snap.custom_data));
      }
      return;
    }
    if (!call) {
      const mine = snap.caller_device === this.device;
      this.calls.set(snap.call_id, outgoingCall(mine, snap.callees.map((u) => u.id), snap.caller, snap.custom_data));
      if (mine && snap.state === 'ringing') {
        this.armFallback(snap.call_id, now + snap.ring_remaining_ms + this.config.fallbackMarginMs);
      }
      if (!mine) this.events.push({ type: 'OutgoingCallStarted', callId: snap.call_id, device: snap.caller_device, callees: snap.callees });
    }
    for (const o of snap.outcomes) this.calleeOutcome(snap.call_id, o.callee, o.reason, o.custom_data);
    for (const d of snap.delivered) this.calleeDelivered(snap.call_id, d.callee, d.device);
  }

  // ----- calls ----------------------------------------------------------

  armFallback(callId, at) {
    if (this.calls.has(callId)) this.armTimer(`fallback:${callId}`, at);
  }

  fireFallback(callId) {
    const call = this.calls.get(callId);
    if (!call) return;
    if (call.state === 'ringing') {
      this.events.push({ type: 'IncomingCallTimeout', callId, caller: call.caller, reason: 'timeout' });
      this.finish(callId);
    } else if (call.state === 'outgoing' && call.mine) {
      for (const [callee, r] of call.outcomes) {
        if (r === null) this.events.push({ type: 'OutgoingCallTimeout', callId, callee, customData: call.customData, reason: 'timeout' });
      }
      this.finish(callId);
    }
  }

  finish(callId) {
    if (this.calls.delete(callId)) this.timers.delete(`fallback:${callId}`);
    const at = this.applyingSeq ?? this.lastSeq ?? 0;
    if (!this.ended.has(callId)) {
      this.ended.set(callId, at);
      while (this.ended.size > this.config.rememberedCalls) {
        this.ended.delete(this.ended.keys().next().value);
      }
    }
  }

  shouldRing(remaining, total) {
    return remaining >= Math.min(this.config.minRingLeftMs, total / 2) && remaining !== 0;
  }

  onSuccess(now, body, result) {
    switch (body.type) {
      case 'invite':
        if (result.type === 'invited') {
          if (this.ended.has(result.call_id)) return;
          let call = this.calls.get(result.call_id);
          if (!call) {
            call = outgoingCall(true, [], { id: this.user, name: '' }, body.custom_data);
            this.calls.set(result.call_id, call);
          }
          if (call.state !== 'outgoing') {
            Object.assign(call, outgoingCall(true, [], call.caller, call.customData));
          }
          call.mine = true;
          for (const c of result.callees) if (!call.outcomes.has(c.user)) call.outcomes.set(c.user, null);
          this.armFallback(result.call_id, now + result.ring_remaining_ms + this.config.fallbackMarginMs);
        } else if (result.type === 'joined' && !this.ended.has(result.call_id)) {
          if (!this.calls.has(result.call_id)) this.calls.set(result.call_id, newCall('silent', result.caller, undefined));
          this.markJoined(result.call_id, result.caller);
        }
        break;
      case 'accept':
        this.markAccepted(body.call_id);
        break;
      case 'join': {
        const s = this.calls.get(body.call_id)?.state;
        if (s === 'ringing' || s === 'silent') this.markAccepted(body.call_id);
        break;
      }
      case 'add': {
        if (result.type !== 'invited') break;
        const call = this.calls.get(body.call_id);
        if (!call || call.state !== 'outgoing' || !call.mine) break;
        let rings = false;
        for (const c of result.callees) {
          const ringing = c.status === 'ringing' || c.status === 'offline';
          rings ||= ringing;
          if (call.outcomes.has(c.user)) {
            if (ringing) call.outcomes.set(c.user, null);
          } else {
            call.outcomes.set(c.user, c.status === 'joined' ? 'accepted' : null);
          }
        }
        if (rings) this.armFallback(body.call_id, now + result.ring_remaining_ms + this.config.fallbackMarginMs);
        break;
      }
      case 'decline':
        this.markDeclined(body.call_id, body.busy === true);
        break;
      case 'cancel': {
        const call = this.calls.get(body.call_id);
        let fire;
        if (call && call.state === 'outgoing') {
          fire = !call.cancelConfirmed;
          call.cancelConfirmed = true;
        } else if (call) {
          fire = false;
        } else {
          fire = !this.ended.has(body.call_id);
          this.finish(body.call_id);
        }
        if (fire) this.events.push({ type: 'OutgoingCallCancelButtonPressed', callId: body.call_id, reason: 'canceled' });
        break;
      }
      default:
        break;
    }
  }

  markJoined(callId, caller) {
    const call = this.calls.get(callId);
    if (!call) return;
    const joinedNow = call.state !== 'in_call';
    call.state = 'in_call';
    this.timers.delete(`fallback:${callId}`);
    if (joinedNow) this.events.push({ type: 'OutgoingCallAccepted', callId, callee: caller.id, customData: undefined, reason: 'accepted' });
  }

  markAccepted(callId) {
    const call = this.calls.get(callId);
    if (!call) return;
    const acceptedNow = call.state !== 'in_call';
    call.state = 'in_call';
    this.timers.delete(`fallback:${callId}`);
    if (acceptedNow) this.events.push({ type: 'IncomingCallAcceptButtonPressed', callId, reason: 'accepted' });
  }

  markDeclined(callId, busy) {
    if (!this.calls.has(callId)) return;
    this.events.push({ type: 'IncomingCallDeclineButtonPressed', callId, busy, reason: busy ? 'busy' : 'declined' });
    this.finish(callId);
  }

  apply(now, event) {
    const callId = event.call_id;
    if (event.type === 'participant_joined' && event.user === this.user) {
      return this.joinedSelf(callId, event.user, event.device);
    }
    if (event.type === 'incoming_call' && event.ring_remaining_ms > 0 && !this.calls.has(callId)) {
      this.ended.delete(callId); // a live ring after the call ended here: rung again
    }
    if (this.ended.has(callId)) return undefined;
    switch (event.type) {
      case 'incoming_call': {
        if (this.calls.has(callId)) return undefined;
        const ring = this.shouldRing(event.ring_remaining_ms, event.ring_timeout_ms);
        this.calls.set(callId, newCall(ring ? 'ringing' : 'silent', event.caller, event.custom_data));
        if (ring) {
          this.armFallback(callId, now + event.ring_remaining_ms + this.config.fallbackMarginMs);
          if (this.config.sendReceipts && this.connected) {
            this.transmit.push({ id: this.freshId(), body: { type: 'received', call_id: callId } });
          }
          this.events.push({
            type: 'IncomingCallReceived', callId, caller: event.caller, callType: event.call_type,
            callees: event.callees, customData: event.custom_data, ringRemainingMs: event.ring_remaining_ms,
            ringTimeoutMs: event.ring_timeout_ms,
          });
        }
        return undefined;
      }
      case 'incoming_ended':
        return this.incomingEnded(callId, event.reason, event.device, event.custom_data);
      case 'outgoing_call': {
        if (this.calls.has(callId) || this.disowned.includes(callId)) return undefined;
        const mine = event.device === this.device;
        if (mine && this.isAbandonedInvite(event.callees)) return this.disown(now, callId, false);
        this.calls.set(callId, outgoingCall(mine, event.callees.map((u) => u.id), { id: this.user, name: '' }, event.custom_data));
        if (mine) {
          this.armFallback(callId, now + event.ring_remaining_ms + this.config.fallbackMarginMs);
        } else {
          this.events.push({ type: 'OutgoingCallStarted', callId, device: event.device, callees: event.callees, callType: event.call_type });
        }
        return undefined;
      }
      case 'callee_ringing':
        if (this.calls.has(callId)) this.events.push({ type: 'CalleeRinging', callId, callee: event.callee });
        return undefined;
      case 'callee_outcome':
        return this.calleeOutcome(callId, event.callee, event.reason, event.custom_data);
      case 'call_ended':
        if (this.calls.has(callId)) {
          this.finish(callId);
          this.events.push({ type: 'CallEnded', callId, reason: event.reason, customData: event.custom_data });
        }
        return undefined;
      case 'callee_delivered':
        return this.calleeDelivered(callId, event.callee, event.device);
      case 'participant_joined':
        if (this.calls.has(callId)) this.events.push({ type: 'ParticipantJoined', callId, user: event.user, device: event.device });
        return undefined;
      case 'participant_left':
        if (this.calls.has(callId)) this.events.push({ type: 'ParticipantLeft', callId, user: event.user, reason: event.reason });
        return undefined;
      default:
        return undefined;
    }
  }

  calleeDelivered(callId, callee, device) {
    const call = this.calls.get(callId);
    if (!call || call.state !== 'outgoing') return;
    const key = `${callee}\u0000${device}`;
    if (call.delivered.has(key)) return;
    call.delivered.add(key);
    this.events.push({ type: 'CalleeDelivered', callId, callee, device });
  }

  joinedSelf(callId, user, device) {
    if (device === this.device) {
      this.ended.delete(callId);
      let call = this.calls.get(callId);
      if (!call) {
        call = newCall('in_call', { id: this.user, name: '' }, undefined);
        this.calls.set(callId, call);
      }
      if (call.state !== 'outgoing') call.state = 'in_call';
      this.timers.delete(`fallback:${callId}`);
    }
    this.events.push({ type: 'ParticipantJoined', callId, user, device });
  }

  incomingEnded(callId, reason, device, data) {
    const call = this.calls.get(callId);
    if (!call) {
      this.finish(callId); // ended before it arrived: never ring for it
      return;
    }
    const mine = device !== undefined && device === this.device;
    const rang = call.state === 'ringing';
    if (reason === 'accepted' && mine) {
      if (this.glareInvitePending(call.caller.id)) this.markJoined(callId, call.caller);
      else this.markAccepted(callId);
      return;
    }
    if ((reason === 'declined' || reason === 'busy') && mine) {
      this.markDeclined(callId, reason === 'busy');
      return;
    }
    let seen = reason;
    if (reason === 'accepted') {
      if (call.state === 'in_call') return; // glare: our own invite accepted it
      this.events.push({ type: 'AnsweredElsewhere', callId, device, customData: data });
      seen = 'answered_elsewhere';
    } else if (reason === 'declined' || reason === 'busy') {
      this.events.push({ type: 'DeclinedElsewhere', callId, device, customData: data });
      seen = 'declined_elsewhere';
    }
    if (rang) {
      this.events.push(seen === 'timeout'
        ? { type: 'IncomingCallTimeout', callId, caller: call.caller, reason: 'timeout' }
        : { type: 'IncomingCallCanceled', callId, caller: call.caller, customData: data, reason: seen });
    }
    this.finish(callId);
  }

  calleeOutcome(callId, callee, reason, answer) {
    const call = this.calls.get(callId);
    if (!call) return;
    if (call.state !== 'outgoing') {
      if (call.state === 'in_call' && reason !== 'accepted') {
        this.events.push({ type: 'CalleeOutcome', callId, callee, reason, customData: answer });
      }
      return;
    }
    if (call.outcomes.has(callee) && call.outcomes.get(callee) !== null) return; // never twice
    call.outcomes.set(callee, reason);
    if ([...call.outcomes.values()].every((r) => r !== null)) this.timers.delete(`fallback:${callId}`);
    let event;
    if (!call.mine) {
      event = { type: 'CalleeOutcome', callId, callee, reason, customData: answer };
    } else if (reason === 'accepted') {
      event = { type: 'OutgoingCallAccepted', callId, callee, customData: answer, reason };
    } else if (reason === 'declined') {
      event = { type: 'OutgoingCallDeclined', callId, callee, customData: answer, reason };
    } else if (reason === 'busy') {
      event = { type: 'OutgoingCallRejectedCauseBusy', callId, callee, customData: answer, reason };
    } else if (reason === 'timeout') {
      // The wire carries no data with a timeout: the app gets its own invite's back.
      event = { type: 'OutgoingCallTimeout', callId, callee, customData: call.customData, reason };
    } else {
      event = { type: 'CalleeOutcome', callId, callee, reason, customData: answer };
    }
    this.events.push(event);
  }
}

function newCall(state, caller, customData) {
  return { state, caller, customData, mine: false, outcomes: new Map(), cancelConfirmed: false, delivered: new Set() };
}

function outgoingCall(mine, callees, caller, customData) {
  const call = newCall('outgoing', caller, customData);
  call.mine = mine;
  for (const c of callees) call.outcomes.set(c, null);
  return call;
}
