// The connection driver: a WebSocket, the sans-IO Session, timers, the
// app's callbacks and the promise-returning actions. Behaves like the Rust
// client: hello with the token, resume with last_seq, heartbeats, reconnect
// with exponential backoff and jitter, unanswered commands resent with
// their request ids, a fresh token from the provider before giving up.

import { Session } from './session.js';
import { decodeServerMessage, encodeClientMessage, isId } from './protocol.js';
import { CommandError, ConnectionError, InvitationError, ProtocolError, ValidationError } from './errors.js';

/** The ten callbacks: app event type -> [callback name, argument builder]. */
export const CALLBACKS = Object.freeze({
  IncomingCallReceived: ['onIncomingCallReceived', (e) => [e.callId, e.caller, e.callType, e.callees, e.customData]],
  IncomingCallCanceled: ['onIncomingCallCanceled', (e) => [e.callId, e.caller, e.customData]],
  IncomingCallTimeout: ['onIncomingCallTimeout', (e) => [e.callId, e.caller]],
  IncomingCallAcceptButtonPressed: ['onIncomingCallAcceptButtonPressed', (e) => [e.callId]],
  IncomingCallDeclineButtonPressed: ['onIncomingCallDeclineButtonPressed', (e) => [e.callId]],
  OutgoingCallCancelButtonPressed: ['onOutgoingCallCancelButtonPressed', (e) => [e.callId]],
  OutgoingCallAccepted: ['onOutgoingCallAccepted', (e) => [e.callId, e.callee]],
  OutgoingCallRejectedCauseBusy: ['onOutgoingCallRejectedCauseBusy', (e) => [e.callId, e.callee, e.customData]],
  OutgoingCallDeclined: ['onOutgoingCallDeclined', (e) => [e.callId, e.callee]],
  OutgoingCallTimeout: ['onOutgoingCallTimeout', (e) => [e.callId, e.callee, e.customData]],
});

const DEFAULTS = {
  heartbeatMs: 20000,
  deadAfterMs: 45000,
  backoffInitialMs: 250,
  backoffMaxMs: 30000,
  connectTimeoutMs: 10000,
};

function randomTag(n) {
  const abc = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < n; i++) s += abc[Math.floor(Math.random() * abc.length)];
  return s;
}

/** Reads `exp` and `iat` of a JWT without verifying it (for renewal timing). */
function tokenTimes(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = typeof atob === 'function' ? atob(part) : Buffer.from(part, 'base64').toString('binary');
    const claims = JSON.parse(json);
    return { exp: claims.exp, iat: claims.iat };
  } catch {
    return {};
  }
}

function checkId(v, what) {
  if (!isId(v)) throw new ValidationError(`${what} must be 1 to 64 letters, digits or _ - . : @ +, got ${JSON.stringify(v)}`);
}

function checkData(v) {
  if (v !== undefined && v !== null && typeof v !== 'string') throw new ValidationError('customData must be a string');
  return v === '' ? undefined : (v ?? undefined);
}

/** Turns a session failure into the typed error a promise rejects with. */
function toError(error) {
  if (error.code === 'timed_out') return new InvitationError('timed_out', error.message);
  return new CommandError(error.code, error.message, { reason: error.reason, retryAfterMs: error.retry_after_ms });
}

/** A client for one device of one user. Create it with `init` (or `new` plus `connect()`). */
export class InvitationClient {
  constructor(options) {
    if (!options || typeof options.url !== 'string') throw new ValidationError('init needs { url }');
    if (options.token === undefined && typeof options.tokenProvider !== 'function') {
      throw new ValidationError('init needs a token or a tokenProvider');
    }
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new ValidationError('no WebSocket: pass the WebSocket constructor (e.g. from the "ws" package) as options.WebSocket');
    }
    this.device = options.device ?? `web-${randomTag(8)}`;
    checkId(this.device, 'device');
    this.token = options.token;
    this.now = options.now ?? (() => Date.now());
    this.session = new Session({
      user: options.user ?? '',
      device: this.device,
      prefix: options.requestPrefix ?? randomTag(6),
      config: options.session ?? {},
    });
    /** request id -> {resolve, reject, kind} */
    this.waiting = new Map();
    this.state = 'idle'; // idle | connecting | connected | reconnecting | stopped
    this.stopError = null;
    this.attempt = 0;
    this.everWelcomed = false;
    this.freshTokenTried = false;
    this.user = null;
    this.ws = null;
    this.timer = null;
    this.heartbeat = null;
    this.reconnectTimer = null;
    this.renewTimer = null;
    this.pumping = false;
    this.pumpAgain = false;
    this.connectWaiters = [];
  }

  // ----- connection -----------------------------------------------------

  /** Connects (once); resolves on the first welcome, rejects with a ConnectionError if it stops first. */
  connect() {
    if (this.state === 'stopped') return Promise.reject(this.stopError);
    if (this.state === 'connected') return Promise.resolve();
    const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.state === 'idle') this.open();
    return p;
  }

  async open() {
    this.setState(this.everWelcomed ? 'reconnecting' : 'connecting');
    let token = this.token;
    if (token === undefined) {
      try {
        token = await this.freshToken();
      } catch (e) {
        return this.stop(new ConnectionError('token_provider', `the token provider failed: ${e?.message ?? e}`));
      }
    }
    if (this.state === 'stopped') return undefined;
    let ws;
    try {
      ws = new this.WebSocket(this.options.url);
    } catch (e) {
      return this.stop(new ConnectionError('transport', `cannot open ${this.options.url}: ${e?.message ?? e}`));
    }
    this.ws = ws;
    this.closingReason = null;
    this.opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.opened = true;
      this.session.handleConnected(this.now(), token);
      this.armHeartbeat();
      this.pump();
    };
    ws.onmessage = (m) => {
      if (this.ws !== ws) return;
      this.onText(typeof m.data === 'string' ? m.data : String(m.data));
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.onClosed(ev?.code);
    };
    return undefined;
  }

  async freshToken() {
    const provider = this.options.tokenProvider;
    if (typeof provider !== 'function') throw new Error('no token provider');
    const token = await provider();
    if (typeof token !== 'string' || token === '') throw new Error('the token provider returned no token');
    this.token = token;
    return token;
  }

  onText(text) {
    this.armHeartbeat();
    let m;
    try {
      m = decodeServerMessage(text);
    } catch (e) {
      this.report(e instanceof ProtocolError ? e : new ProtocolError(String(e)));
      return;
    }
    if (m.type === 'closing') {
      this.closingReason = m.reason;
    } else if (m.type === 'welcome') {
      this.attempt = 0;
      this.freshTokenTried = false;
      this.everWelcomed = true;
      this.user = m.user;
      this.session.user = m.user.id;
      this.setState('connected');
      this.scheduleRenew();
      for (const w of this.connectWaiters.splice(0)) w.resolve();
    }
    this.session.handleMessage(this.now(), m);
    this.pump();
  }

  onClosed(code) {
    this.ws = null;
    this.disarmHeartbeat();
    clearTimeout(this.renewTimer);
    this.session.handleDisconnected(this.now());
    this.pump();
    if (this.state === 'stopped') return;
    const refusal = this.session.refusal;
    if (refusal && refusal.code === 'unauthorized') {
      if (typeof this.options.tokenProvider === 'function' && !this.freshTokenTried) {
        this.freshTokenTried = true;
        this.token = undefined;
        return this.retry();
      }
      return this.stop(new ConnectionError('unauthorized', refusal.message));
    }
    switch (this.closingReason) {
      case 'replaced':
        return this.stop(new ConnectionError('replaced', 'another connection of this user and device took over'));
      case 'too_many_devices':
        return this.stop(new ConnectionError('too_many_devices', 'this user has the most devices online the server allows'));
      case 'token_expired':
        if (typeof this.options.tokenProvider !== 'function') {
          return this.stop(new ConnectionError('token_expired', 'the token expired and there is no token provider'));
        }
        this.token = undefined;
        break;
      default:
        break;
    }
    if (!this.everWelcomed && !this.opened) {
      return this.stop(new ConnectionError('transport', `cannot connect to ${this.options.url} (close code ${code ?? 'none'})`));
    }
    return this.retry();
  }

  /** Reconnects after the backoff: 250 ms doubling to 30 s, each wait between half and all of its step. */
  retry() {
    const step = Math.min(this.options.backoffInitialMs * 2 ** this.attempt, this.options.backoffMaxMs);
    this.attempt = Math.min(this.attempt + 1, 30);
    const wait = step / 2 + Math.random() * (step / 2);
    this.setState('reconnecting');
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.open(), wait);
  }

  armHeartbeat() {
    this.disarmHeartbeat();
    const { heartbeatMs, deadAfterMs } = this.options;
    this.heartbeat = setTimeout(() => {
      this.session.ping();
      this.pump();
      this.heartbeat = setTimeout(() => this.dropLink(), Math.max(deadAfterMs - heartbeatMs, 1));
    }, heartbeatMs);
  }

  disarmHeartbeat() {
    clearTimeout(this.heartbeat);
    this.heartbeat = null;
  }

  /** The link looks dead (silent past deadAfterMs): drop it and reconnect. */
  dropLink() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    try { ws.close(); } catch { /* already closing */ }
    this.onClosed(undefined);
  }

  scheduleRenew() {
    clearTimeout(this.renewTimer);
    if (typeof this.options.tokenProvider !== 'function' || !this.token) return;
    const { exp, iat } = tokenTimes(this.token);
    if (typeof exp !== 'number') return;
    const start = typeof iat === 'number' ? iat : Date.now() / 1000;
    const at = (start + 0.8 * (exp - start)) * 1000;
    this.renewTimer = setTimeout(async () => {
      try {
        const token = await this.freshToken();
        this.session.command(this.now(), { type: 'renew', token });
        this.pump();
      } catch (e) {
        this.report(new ConnectionError('token_provider', String(e?.message ?? e)));
      }
    }, Math.min(Math.max(at - Date.now(), 1000), 2 ** 31 - 1));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.safeCall('onConnectionStateChanged', [state]);
  }

  stop(error) {
    if (this.state === 'stopped') return;
    this.stopError = error;
    this.setState('stopped');
    clearTimeout(this.timer);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.renewTimer);
    this.disarmHeartbeat();
    const ws = this.ws;
    this.ws = null;
    if (ws) try { ws.close(1000); } catch { /* closing */ }
    for (const w of this.connectWaiters.splice(0)) w.reject(error);
    for (const [, w] of this.waiting) w.reject(error);
    this.waiting.clear();
    this.safeCall('onStopped', [error]);
  }

  /** Closes the connection for good. Pending actions reject with code `closed`. */
  close() {
    this.stop(new ConnectionError('closed', 'the client was closed'));
  }

  // ----- the session loop ----------------------------------------------

  pump() {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        let out;
        while ((out = this.session.pollTransmit())) {
          if (this.ws && this.ws.readyState === 1) this.ws.send(encodeClientMessage(out.id, out.body));
        }
        let done;
        while ((done = this.session.pollCompletion())) {
          const [id, outcome] = done;
          const w = this.waiting.get(id);
          if (!w) continue;
          this.waiting.delete(id);
          if (outcome.ok) w.resolve(w.map(outcome.result));
          else w.reject(toError(outcome.error));
        }
        let event;
        while ((event = this.session.pollEvent())) this.dispatch(event);
      } while (this.pumpAgain);
    } finally {
      this.pumping = false;
    }
    this.armTimer();
  }

  armTimer() {
    clearTimeout(this.timer);
    if (this.state === 'stopped') return;
    const at = this.session.pollTimeout();
    if (at === undefined) return;
    const wait = Math.min(Math.max(at - this.now(), 0), 2 ** 31 - 1);
    this.timer = setTimeout(() => {
      this.session.handleTimeout(this.now());
      this.pump();
    }, wait);
  }

  dispatch(event) {
    const ctx = { reason: event.reason, customData: event.customData, event, client: this };
    const cb = CALLBACKS[event.type];
    if (cb) this.safeCall(cb[0], [...cb[1](event), ctx]);
    this.safeCall('onEvent', [event]);
  }

  safeCall(name, args) {
    const f = this.options[name];
    if (typeof f !== 'function') return;
    try {
      const r = f(...args);
      if (r && typeof r.catch === 'function') r.catch((e) => this.report(e, name));
    } catch (e) {
      this.report(e, name);
    }
  }

  report(error, where) {
    if (typeof this.options.onError === 'function') {
      try { this.options.onError(error, where); } catch { /* the app's error handler threw */ }
    } else if (where) {
      console.error(`invitation: ${where} threw`, error);
    }
  }

  // ----- actions --------------------------------------------------------

  send(body, map = (r) => r) {
    if (this.state === 'stopped') return Promise.reject(this.stopError);
    if (this.session.pending.size >= this.session.config.maxPending) {
      return Promise.reject(new InvitationError('queue_full', `${this.session.config.maxPending} commands are already waiting for an answer`));
    }
    const id = this.session.command(this.now(), body);
    const p = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject, map }));
    this.pump();
    return p;
  }

  /**
   * Invites one or more users. Resolves with
   * `{type: 'invited', callId, ringRemainingMs, callees: [{user, status}]}`, or under glare
   * `{type: 'joined', callId, caller}` (your invite accepted their call).
   */
  invite(callees, { callType = 'voice', customData, timeoutS } = {}) {
    try {
      const list = Array.isArray(callees) ? callees : [callees];
      if (list.length === 0) throw new ValidationError('invite needs at least one callee');
      list.forEach((c) => checkId(c, 'callee'));
      if (callType !== 'voice' && callType !== 'video') throw new ValidationError('callType is "voice" or "video"');
      if (timeoutS !== undefined && (!Number.isInteger(timeoutS) || timeoutS < 1 || timeoutS > 600)) {
        throw new ValidationError('timeoutS is a whole number of seconds, 1 to 600');
      }
      return this.send({ type: 'invite', callees: list, call_type: callType, custom_data: checkData(customData), timeout_s: timeoutS }, mapResult);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Accepts a call ringing on this device. */
  accept(callId, customData) { return this.callCommand('accept', callId, { custom_data: customData }); }

  /** Declines for the user (every device stops ringing). */
  decline(callId, customData) { return this.callCommand('decline', callId, { custom_data: customData }); }

  /** Declines as busy (the caller sees busy). */
  declineBusy(callId, customData) { return this.callCommand('decline', callId, { busy: true, custom_data: customData }); }

  /** Caller: stops the ring for every callee that has not answered. */
  cancel(callId, customData) { return this.callCommand('cancel', callId, { custom_data: customData }); }

  /** Leaves the call (ends it when fewer than two others remain). */
  hangUp(callId, customData) { return this.callCommand('hang_up', callId, { custom_data: customData }); }

  /** Rings more users into an accepted call you are in. */
  add(callId, callees) {
    try {
      const list = Array.isArray(callees) ? callees : [callees];
      if (list.length === 0) throw new ValidationError('add needs at least one callee');
      list.forEach((c) => checkId(c, 'callee'));
      return this.callCommand('add', callId, { callees: list }, mapResult);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Enters a call you were invited to while it goes on (an accept while it still rings). */
  join(callId) { return this.callCommand('join', callId, {}); }

  /** Ends the call for everyone (who may: the server's end policy). */
  end(callId) { return this.callCommand('end', callId, {}); }

  callCommand(type, callId, fields, map = mapResult) {
    try {
      checkId(callId, 'callId');
      const body = { type, call_id: callId, ...fields };
      if ('custom_data' in fields) body.custom_data = checkData(fields.custom_data);
      return this.send(body, map);
    } catch (e) {
      return Promise.reject(e);
    }
  }
}

/** Wire result -> what an action resolves with (camelCase). */
function mapResult(r) {
  switch (r.type) {
    case 'invited':
      return { type: 'invited', callId: r.call_id, ringRemainingMs: r.ring_remaining_ms, callees: r.callees };
    case 'joined':
      return { type: 'joined', callId: r.call_id, caller: r.caller };
    default:
      return { type: 'done' };
  }
}

/**
 * Creates a client and starts connecting. `options`: `url`, `token` or
 * `tokenProvider`, optional `device`, `WebSocket`, any of the ten callbacks,
 * `onEvent`, `onConnectionStateChanged`, `onStopped`, `onError`.
 */
export function init(options) {
  const client = new InvitationClient(options);
  client.connect().catch(() => { /* reported through onStopped; await client.connect() to see it */ });
  return client;
}
