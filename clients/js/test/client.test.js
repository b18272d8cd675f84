// The client (init, callbacks, actions) against the real invitation-server
// binary over WebSockets (the `ws` package: Node 20 has no global
// WebSocket). Every wait has a deadline and says what it saw.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { init, InvitationClient, CommandError, ConnectionError, ValidationError } from '../index.js';
import { startServer, mintToken, within } from './harness.js';

const SECRET = 'client-test-secret-0123456789';
const SOON = 10000;
let server;

before(async () => {
  server = await startServer({
    secret: SECRET,
    shed_invites_after_ms: 0,
    max_custom_data: 64,
    invite_rate_per_user: 1000,
    invite_burst_per_user: 1000,
  });
});

/** Every client a test made: closed after the tests, whatever failed (no timer keeps node alive). */
const made = [];

after(async () => {
  for (const c of made) c.close();
  await server?.stop();
});

/**
 * A WebSocket for the client that can cut the link: `cut(pred)` makes the
 * next server message matching `pred` vanish together with the connection
 * (the server processed the command, the client never hears the answer).
 */
function flakyWebSocket() {
  const control = { cutWhen: null, cuts: 0, sockets: 0, blackhole: 0, sent: [] };
  class Flaky {
    constructor(url) {
      control.sockets += 1;
      this.n = control.sockets;
      this.inner = new WebSocket(url);
      this.readyState = 0;
      this.inner.on('open', () => { this.readyState = 1; this.onopen?.(); });
      this.inner.on('message', (data) => {
        const text = data.toString('utf8');
        if (control.blackhole === this.n) return; // this link went silent
        if (control.cutWhen && control.cutWhen(JSON.parse(text))) {
          control.cutWhen = null;
          control.cuts += 1;
          this.inner.terminate();
          return;
        }
        this.onmessage?.({ data: text });
      });
      this.inner.on('close', (code) => { this.readyState = 3; this.onclose?.({ code }); });
      this.inner.on('error', () => {});
    }

    send(text) {
      control.sent.push(JSON.parse(text).type);
      this.inner.send(text);
    }

    close(code) { this.inner.close(code); }
  }
  return { Flaky, control };
}

/** A client for `user` on `device` that records every callback with its arguments. */
function client(user, device, extra = {}) {
  const calls = [];
  const waiters = [];
  const record = (name) => (...args) => {
    const ctx = args.pop();
    calls.push([name, ...args, ctx.reason]);
    for (const w of [...waiters]) w();
  };
  const names = ['onIncomingCallReceived', 'onIncomingCallCanceled', 'onIncomingCallTimeout',
    'onIncomingCallAcceptButtonPressed', 'onIncomingCallDeclineButtonPressed', 'onOutgoingCallCancelButtonPressed',
    'onOutgoingCallAccepted', 'onOutgoingCallRejectedCauseBusy', 'onOutgoingCallDeclined', 'onOutgoingCallTimeout'];
  const callbacks = Object.fromEntries(names.map((n) => [n, record(n)]));
  const streamed = [];
  const c = init({
    url: server.url,
    device,
    WebSocket,
    token: mintToken({ secret: SECRET, user, name: user.toUpperCase() }),
    ...callbacks,
    onEvent(e) { streamed.push(e); for (const w of [...waiters]) w(); },
    ...extra,
  });
  made.push(c);
  c.calls = calls;
  c.streamed = streamed;
  /** Waits until `n` callbacks were recorded; returns them. */
  c.callbacks = (n, ms = SOON) => new Promise((resolve, reject) => {
    const check = () => {
      if (calls.length >= n) {
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(t);
        resolve(calls.slice());
      }
    };
    const t = setTimeout(() => {
      waiters.splice(waiters.indexOf(check), 1);
      reject(new Error(`${user}/${device}: ${calls.length} callbacks within ${ms} ms, wanted ${n}: ${JSON.stringify(calls)}`));
    }, ms);
    waiters.push(check);
    check();
  });
  /** Waits for a stream event matching `pred`. */
  c.event = (pred, ms = SOON) => new Promise((resolve, reject) => {
    const check = () => {
      const e = streamed.find(pred);
      if (e) {
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(t);
        resolve(e);
      }
    };
    const t = setTimeout(() => {
      waiters.splice(waiters.indexOf(check), 1);
      reject(new Error(`${user}/${device}: no such event within ${ms} ms; saw ${JSON.stringify(streamed.map((e) => e.type))}`));
    }, ms);
    waiters.push(check);
    check();
  });
  return c;
}

test('without a WebSocket (Node 20 has no global one) init says what to pass', () => {
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    assert.throws(() => init({ url: 'ws://127.0.0.1:1/', token: 't' }), (e) => e instanceof ValidationError && /WebSocket constructor/.test(e.message));
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
  assert.throws(() => init({ url: 'ws://x/' , WebSocket }), (e) => e instanceof ValidationError && e.code === 'invalid');
});

test('a call accepted then hung up: the callbacks, their arguments and order, on both sides; custom data travels', async () => {
  const alice = client('alice1', 'web');
  const bob = client('bob1', 'phone');
  await within(SOON, Promise.all([alice.connect(), bob.connect()]), 'connect');
  const r = await within(SOON, alice.invite(['bob1'], { callType: 'video', customData: '{"room":"r1"}' }), 'invite');
  assert.equal(r.type, 'invited');
  assert.deepEqual(r.callees, [{ user: 'bob1', status: 'ringing' }]);
  assert.ok(r.ringRemainingMs > 55000 && r.ringRemainingMs <= 60000, String(r.ringRemainingMs));
  const [received] = await bob.callbacks(1);
  assert.deepEqual(received, ['onIncomingCallReceived', r.callId, { id: 'alice1', name: 'ALICE1' }, 'video', [{ id: 'bob1', name: 'BOB1' }], '{"room":"r1"}', undefined]);
  assert.deepEqual(await within(SOON, bob.accept(r.callId, 'camera-off'), 'accept'), { type: 'done' });
  assert.deepEqual(await bob.callbacks(2), [received, ['onIncomingCallAcceptButtonPressed', r.callId, 'accepted']]);
  assert.deepEqual(await alice.callbacks(1), [['onOutgoingCallAccepted', r.callId, 'bob1', 'accepted']]);
  const accepted = alice.streamed.find((e) => e.type === 'OutgoingCallAccepted');
  assert.equal(accepted.customData, 'camera-off', "the callee's accept data reaches the caller");
  await within(SOON, bob.hangUp(r.callId, 'bye'), 'hang up');
  const ended = await alice.event((e) => e.type === 'CallEnded');
  assert.deepEqual(ended, { type: 'CallEnded', callId: r.callId, reason: 'hung_up', customData: 'bye' });
  assert.equal(alice.calls.length, 1, 'no more callbacks for the caller');
  assert.equal(bob.calls.length, 2, 'no more callbacks for the callee');
  alice.close();
  bob.close();
});

test('decline, busy decline, timeout and cancel fire the matching callbacks on both sides', async () => {
  const alice = client('alice2', 'web');
  const bob = client('bob2', 'phone');
  await within(SOON, Promise.all([alice.connect(), bob.connect()]), 'connect');
  // decline
  const d = await alice.invite('bob2');
  await bob.callbacks(1);
  await bob.decline(d.callId, 'not now');
  assert.deepEqual((await alice.callbacks(1))[0], ['onOutgoingCallDeclined', d.callId, 'bob2', 'declined']);
  assert.deepEqual((await bob.callbacks(2))[1], ['onIncomingCallDeclineButtonPressed', d.callId, 'declined']);
  // busy decline, with data
  const b = await alice.invite('bob2', { customData: 'x' });
  await bob.callbacks(3);
  await bob.declineBusy(b.callId, 'in a meeting');
  assert.deepEqual((await alice.callbacks(2))[1], ['onOutgoingCallRejectedCauseBusy', b.callId, 'bob2', 'in a meeting', 'busy']);
  assert.deepEqual((await bob.callbacks(4))[3], ['onIncomingCallDeclineButtonPressed', b.callId, 'busy']);
  // cancel
  const c = await alice.invite('bob2');
  await bob.callbacks(5);
  await alice.cancel(c.callId, 'wrong number');
  assert.deepEqual((await alice.callbacks(3))[2], ['onOutgoingCallCancelButtonPressed', c.callId, 'canceled']);
  assert.deepEqual((await bob.callbacks(6))[5], ['onIncomingCallCanceled', c.callId, { id: 'alice2', name: 'ALICE2' }, 'wrong number', 'canceled']);
  // timeout (a 2 s ring: rings here, since half the ring time is left)
  const t = await alice.invite('bob2', { timeoutS: 2, customData: 'mine' });
  await bob.callbacks(7);
  assert.deepEqual((await bob.callbacks(8, 6000))[7], ['onIncomingCallTimeout', t.callId, { id: 'alice2', name: 'ALICE2' }, 'timeout']);
  assert.deepEqual((await alice.callbacks(4, 6000))[3], ['onOutgoingCallTimeout', t.callId, 'bob2', 'mine', 'timeout']);
  assert.deepEqual(bob.calls.map((c) => c[0]), [
    'onIncomingCallReceived', 'onIncomingCallDeclineButtonPressed',
    'onIncomingCallReceived', 'onIncomingCallDeclineButtonPressed',
    'onIncomingCallReceived', 'onIncomingCallCanceled',
    'onIncomingCallReceived', 'onIncomingCallTimeout',
  ]);
  alice.close();
  bob.close();
});

test('typed errors: the protocol code on a CommandError, bad arguments refused before sending', async () => {
  const alice = client('alice3', 'web');
  const bob = client('bob3', 'phone');
  await within(SOON, Promise.all([alice.connect(), bob.connect()]), 'connect');
  await assert.rejects(alice.accept('c-nope'), (e) => e instanceof CommandError && e.code === 'not_found');
  const r = await alice.invite('bob3');
  await bob.callbacks(1);
  await assert.rejects(bob.cancel(r.callId), (e) => e instanceof CommandError && e.code === 'wrong_role');
  await assert.rejects(alice.accept(r.callId), (e) => e instanceof CommandError && e.code === 'wrong_role');
  await assert.rejects(bob.accept(r.callId, 'x'.repeat(65)), (e) => e instanceof CommandError && e.code === 'invalid');
  await bob.decline(r.callId);
  await assert.rejects(bob.accept(r.callId), (e) => e instanceof CommandError && e.code === 'ended' && e.reason === 'declined');
  await assert.rejects(alice.invite([]), (e) => e instanceof ValidationError);
  await assert.rejects(alice.invite(['no spaces']), (e) => e instanceof ValidationError);
  await assert.rejects(alice.invite('bob3', { callType: 'hologram' }), (e) => e instanceof ValidationError);
  await assert.rejects(alice.invite('bob3', { timeoutS: 0 }), (e) => e instanceof ValidationError);
  await assert.rejects(alice.accept(r.callId, 7), (e) => e instanceof ValidationError);
  alice.close();
  bob.close();
});

test('the answer is lost with the link: the client reconnects, resumes, resends the same request id, and every callback fires once', async () => {
  const { Flaky, control } = flakyWebSocket();
  const alice = client('alice4', 'web');
  const bob = client('bob4', 'phone', { WebSocket: Flaky, backoffInitialMs: 50 });
  await within(SOON, Promise.all([alice.connect(), bob.connect()]), 'connect');
  const r = await alice.invite('bob4');
  await bob.callbacks(1);
  const sentIds = [];
  const send = Flaky.prototype.send;
  Flaky.prototype.send = function spy(text) {
    const m = JSON.parse(text);
    if (m.type === 'accept') sentIds.push(m.id);
    return send.call(this, text);
  };
  // The server accepts, its answer (the incoming_ended event with re) is cut with the link.
  control.cutWhen = (m) => m.type === 'event' && m.re !== undefined;
  const accepted = await within(SOON, bob.accept(r.callId), 'accept across the reconnect');
  assert.deepEqual(accepted, { type: 'done' });
  assert.equal(control.cuts, 1);
  assert.equal(control.sockets, 2, 'one reconnect');
  assert.equal(sentIds.length, 2, 'the accept was sent twice');
  assert.equal(sentIds[0], sentIds[1], 'with the same request id');
  assert.deepEqual((await bob.callbacks(2)).map((c) => c[0]), ['onIncomingCallReceived', 'onIncomingCallAcceptButtonPressed']);
  assert.deepEqual((await alice.callbacks(1)).map((c) => c[0]), ['onOutgoingCallAccepted']);
  const states = bob.streamed.filter((e) => e.type === 'Connection').map((e) => `${e.state}${e.resumed === undefined ? '' : `:${e.resumed}`}`);
  assert.deepEqual(states, ['connected:false', 'reconnecting', 'connected:true']);
  // Later events still arrive once: alice hangs up.
  await alice.hangUp(r.callId);
  const ended = await bob.event((e) => e.type === 'CallEnded');
  assert.equal(ended.reason, 'hung_up');
  assert.equal(bob.calls.length, 2);
  assert.equal(bob.streamed.filter((e) => e.type === 'CallEnded').length, 1);
  Flaky.prototype.send = send;
  alice.close();
  bob.close();
});

test('events sent while the link was down are replayed on resume, once', async () => {
  const { Flaky, control } = flakyWebSocket();
  const alice = client('alice5', 'web');
  const bob = client('bob5', 'phone', { WebSocket: Flaky, backoffInitialMs: 50 });
  await within(SOON, Promise.all([alice.connect(), bob.connect()]), 'connect');
  // Bob's link dies as the invitation reaches it; the server replays it on resume.
  control.cutWhen = (m) => m.type === 'event' && m.event?.type === 'incoming_call';
  const r = await alice.invite('bob5');
  const [got] = await bob.callbacks(1);
  assert.deepEqual(got.slice(0, 2), ['onIncomingCallReceived', r.callId]);
  assert.equal(control.cuts, 1);
  await alice.cancel(r.callId);
  assert.deepEqual((await bob.callbacks(2))[1].slice(0, 2), ['onIncomingCallCanceled', r.callId]);
  assert.equal(bob.calls.length, 2);
  assert.ok(bob.streamed.some((e) => e.type === 'Connection' && e.resumed === true), 'it resumed');
  alice.close();
  bob.close();
});

test('a refused token: one fresh token from the provider, then a ConnectionError unauthorized', async () => {
  let asked = 0;
  const c = new InvitationClient({
    url: server.url,
    WebSocket,
    tokenProvider: async () => {
      asked += 1;
      return mintToken({ secret: 'another-secret-0123456789', user: 'mallory' });
    },
    backoffInitialMs: 10,
  });
  made.push(c);
  await assert.rejects(within(SOON, c.connect(), 'connect'), (e) => e instanceof ConnectionError && e.code === 'unauthorized');
  assert.equal(asked, 2, 'the first token and one fresh one');
  assert.equal(c.state, 'stopped');
  await assert.rejects(c.invite('bob'), (e) => e instanceof ConnectionError && e.code === 'unauthorized');
});

test('the same device connecting twice: the first client stops with replaced and stays down', async () => {
  let onStop;
  const stopped = new Promise((resolve) => { onStop = resolve; });
  const first = client('zed', 'phone', { onStopped: (e) => onStop(e) });
  await within(SOON, first.connect(), 'first');
  const second = client('zed', 'phone');
  await within(SOON, second.connect(), 'second');
  const e = await within(SOON, stopped, 'the first client stopping');
  assert.ok(e instanceof ConnectionError);
  assert.equal(e.code, 'replaced');
  assert.equal(first.state, 'stopped');
  assert.equal(second.state, 'connected');
  second.close();
});

test('pending commands are bounded: past the limit an action rejects with queue_full', async () => {
  const c = new InvitationClient({ url: 'ws://127.0.0.1:9/', WebSocket, token: 't', session: { maxPending: 3 } });
  made.push(c);
  // Not connected: commands wait for the link.
  const pending = [c.accept('c-1'), c.accept('c-2'), c.accept('c-3')];
  pending.forEach((p) => p.catch(() => {}));
  await assert.rejects(c.accept('c-4'), (e) => e.code === 'queue_full');
  c.close();
  for (const p of pending) await assert.rejects(p, (e) => e.code === 'closed');
});

test('a token provider renews the token in band at 80 % of its life: the connection outlives the first token', async () => {
  const tokens = [];
  let renewed;
  const secondToken = new Promise((resolve) => { renewed = resolve; });
  const states = [];
  const c = new InvitationClient({
    url: server.url,
    WebSocket,
    device: 'renewer',
    tokenProvider: async () => {
      const token = mintToken({ secret: SECRET, user: 'rita', ttlS: tokens.length === 0 ? 3 : 3600 });
      tokens.push(token);
      if (tokens.length === 2) renewed();
      return token;
    },
    onConnectionStateChanged: (s) => states.push(s),
  });
  made.push(c);
  await within(SOON, c.connect(), 'connect');
  const exp = JSON.parse(Buffer.from(tokens[0].split('.')[1], 'base64url').toString()).exp;
  await within(SOON, secondToken, 'the renewal');
  assert.ok(Date.now() < exp * 1000, 'renewed before the first token expired');
  // The first token's expiry must pass (a server timer: the only wait here).
  await new Promise((resolve) => { setTimeout(resolve, exp * 1000 - Date.now() + 1000); });
  await assert.rejects(within(SOON, c.accept('c-none'), 'a command after the expiry'), (e) => e instanceof CommandError && e.code === 'not_found');
  assert.deepEqual(states, ['connecting', 'connected'], 'never dropped, never reconnected');
  assert.equal(tokens.length, 2);
  c.close();
});

test('heartbeat: a silent link gets a ping, then is dropped and replaced, and the session resumes', async () => {
  const { Flaky, control } = flakyWebSocket();
  const states = [];
  const bob = client('bob6', 'phone', { WebSocket: Flaky, heartbeatMs: 300, deadAfterMs: 900, backoffInitialMs: 50, onConnectionStateChanged: (s) => states.push(s) });
  await within(SOON, bob.connect(), 'connect');
  // A healthy link: pings are answered by pongs and nothing else happens.
  await bob.event((e) => e.type === 'Connection' && e.state === 'connected');
  control.blackhole = 1; // from now on the first link delivers nothing (a dead peer)
  await bob.event((e) => e.type === 'Connection' && e.state === 'reconnecting');
  await bob.event((e) => e.type === 'Connection' && e.state === 'connected' && e.resumed === true);
  const firstLink = control.sent.slice(0, control.sent.indexOf('hello', 1));
  assert.ok(firstLink.includes('ping'), `the silent link got a ping first: ${JSON.stringify(control.sent)}`);
  assert.equal(control.sockets, 2);
  assert.deepEqual(states, ['connecting', 'connected', 'reconnecting', 'connected']);
  bob.close();
});

test('in-call actions: add rings a third user into the call, a late join enters it, end ends it for everyone', async () => {
  const alice = client('alice7', 'web');
  const bob = client('bob7', 'phone');
  const carol = client('carol7', 'tablet');
  await within(SOON, Promise.all([alice.connect(), bob.connect(), carol.connect()]), 'connect');
  const r = await alice.invite('bob7');
  await bob.callbacks(1);
  await bob.accept(r.callId);
  await alice.callbacks(1);
  const added = await within(SOON, bob.add(r.callId, ['carol7']), 'add');
  assert.equal(added.type, 'invited');
  assert.deepEqual(added.callees, [{ user: 'carol7', status: 'ringing' }]);
  const [ring] = await carol.callbacks(1);
  assert.equal(ring[0], 'onIncomingCallReceived');
  assert.equal(ring[1], r.callId);
  assert.deepEqual(ring[2], { id: 'alice7', name: 'ALICE7' }, 'the caller is the call\'s caller');
  assert.deepEqual(ring[4].map((u) => u.id).sort(), ['bob7', 'carol7']);
  await carol.decline(r.callId);
  // Carol changes her mind: a late join while the call goes on.
  assert.deepEqual(await within(SOON, carol.join(r.callId), 'join'), { type: 'done' });
  const joined = await alice.event((e) => e.type === 'ParticipantJoined' && e.user === 'carol7');
  assert.deepEqual(joined, { type: 'ParticipantJoined', callId: r.callId, user: 'carol7', device: 'tablet' });
  await carol.event((e) => e.type === 'ParticipantJoined' && e.user === 'carol7');
  // Bob may not end it (the default end policy: the caller only); Alice may.
  await assert.rejects(bob.end(r.callId), (e) => e instanceof CommandError && e.code === 'wrong_role');
  await within(SOON, alice.end(r.callId), 'end');
  for (const c of [alice, bob, carol]) {
    const ended = await c.event((e) => e.type === 'CallEnded');
    assert.equal(ended.callId, r.callId);
    assert.equal(ended.reason, 'hung_up');
  }
  assert.deepEqual(carol.calls.map((c) => c[0]), ['onIncomingCallReceived', 'onIncomingCallDeclineButtonPressed']);
});
