// The sans-IO session with virtual time: retries with the same request id,
// resume after a reconnect, duplicates dropped, gaps filled, bounds held.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Session, decodeServerMessage } from '../index.js';

const ALICE = { id: 'alice', name: 'Alice' };
const BOB = { id: 'bob', name: 'Bob' };

function sent(s) {
  const out = [];
  let m;
  while ((m = s.pollTransmit())) out.push({ id: m.id, ...m.body });
  return out;
}

function events(s) {
  const out = [];
  let e;
  while ((e = s.pollEvent())) out.push(e);
  return out;
}

function completions(s) {
  const out = [];
  let c;
  while ((c = s.pollCompletion())) out.push(c);
  return out;
}

/** Feeds a server message, given as the wire JSON (it goes through the decoder). */
function feed(s, now, msg) {
  s.handleMessage(now, decodeServerMessage(JSON.stringify({ v: 1, ...msg })));
}

function incoming(seq, callId, remaining = 30000) {
  return {
    type: 'event', seq,
    event: { type: 'incoming_call', call_id: callId, caller: ALICE, call_type: 'voice', callees: [BOB], ring_remaining_ms: remaining, ring_timeout_ms: 30000 },
  };
}

/** A session for bob/phone, welcomed fresh at seq 0. */
function fresh(t = 0) {
  const s = new Session({ user: 'bob', device: 'phone', prefix: 't' });
  s.handleConnected(t, 'tok');
  const [hello] = sent(s);
  assert.deepEqual(hello, { id: 'tr1', type: 'hello', device: 'phone', token: 'tok', last_seq: undefined });
  feed(s, t, { type: 'welcome', re: hello.id, user: BOB, device: 'phone', seq: 0, resumed: false });
  feed(s, t, { type: 'sync', seq: 0, calls: [], ended: [] });
  events(s);
  return s;
}

test('an unanswered command is resent with the same id: after 2 s, doubling, and first after a reconnect', () => {
  const s = fresh();
  const id = s.command(0, { type: 'accept', call_id: 'c-1' });
  assert.deepEqual(sent(s), [{ id, type: 'accept', call_id: 'c-1' }]);
  s.handleTimeout(1999);
  assert.deepEqual(sent(s), []);
  s.handleTimeout(2000);
  assert.deepEqual(sent(s), [{ id, type: 'accept', call_id: 'c-1' }]);
  s.handleTimeout(5999);
  assert.deepEqual(sent(s), [], 'the second retry waits 4 s');
  s.handleTimeout(6000);
  assert.deepEqual(sent(s), [{ id, type: 'accept', call_id: 'c-1' }]);
  // The link drops: nothing is sent while down; on reconnect hello first, then the command, same id.
  s.handleDisconnected(7000);
  assert.deepEqual(events(s), [{ type: 'Connection', state: 'reconnecting' }]);
  s.handleTimeout(20000);
  assert.deepEqual(sent(s), []);
  s.handleConnected(21000, 'tok2');
  const out = sent(s);
  assert.equal(out.length, 2);
  assert.equal(out[0].type, 'hello');
  assert.equal(out[0].last_seq, 0);
  assert.deepEqual(out[1], { id, type: 'accept', call_id: 'c-1' });
  // One answer, one completion; a second copy of the answer (the server's stored reply) changes nothing.
  feed(s, 21001, { type: 'reply', re: id, result: { type: 'done' } });
  feed(s, 21002, { type: 'reply', re: id, result: { type: 'done' } });
  assert.deepEqual(completions(s), [[id, { ok: true, result: { type: 'done' } }]]);
  s.handleTimeout(60000);
  assert.deepEqual(sent(s), [], 'an answered command is never resent');
});

test('a command unanswered for 30 s fails with timed_out and is never sent again', () => {
  const s = fresh();
  const id = s.command(0, { type: 'cancel', call_id: 'c-1' });
  sent(s);
  for (let t = 0; t <= 30000; t += 1000) s.handleTimeout(t);
  const done = completions(s);
  assert.equal(done.length, 1);
  assert.equal(done[0][0], id);
  assert.equal(done[0][1].ok, false);
  assert.equal(done[0][1].error.code, 'timed_out');
  sent(s);
  s.handleTimeout(100000);
  assert.deepEqual(sent(s), []);
  feed(s, 100001, { type: 'reply', re: id, result: { type: 'done' } });
  assert.deepEqual(completions(s), [], 'a late answer completes nothing');
});

test('resume: the next hello carries the last seq, replayed events are dropped, each callback fires once', () => {
  const s = fresh();
  feed(s, 0, incoming(1, 'c-1'));
  const first = events(s);
  assert.deepEqual(first.map((e) => [e.type, e.callId]), [['IncomingCallReceived', 'c-1']]);
  assert.deepEqual(sent(s).map((m) => [m.type, m.call_id]), [['received', 'c-1']]);
  s.handleDisconnected(100);
  events(s);
  s.handleConnected(200, 'tok');
  const [hello] = sent(s);
  assert.equal(hello.last_seq, 1);
  feed(s, 201, { type: 'welcome', re: hello.id, user: BOB, device: 'phone', seq: 2, resumed: true });
  // The server replays an overlap (seq 1 again) and the new event.
  feed(s, 202, incoming(1, 'c-1'));
  feed(s, 203, { type: 'event', seq: 2, event: { type: 'incoming_ended', call_id: 'c-1', reason: 'canceled', custom_data: 'sorry' } });
  feed(s, 204, { type: 'event', seq: 2, event: { type: 'incoming_ended', call_id: 'c-1', reason: 'canceled', custom_data: 'sorry' } });
  assert.deepEqual(events(s), [
    { type: 'Connection', state: 'connected', resumed: true, user: BOB },
    { type: 'IncomingCallCanceled', callId: 'c-1', caller: ALICE, customData: 'sorry', reason: 'canceled' },
  ]);
  assert.equal(s.lastSeq, 2);
  assert.equal(s.duplicates, 2);
  assert.deepEqual(sent(s), [], 'no receipt for a replayed ring it already acknowledged');
});

test('a gap is held for 1 s, then filled by a sync; events after the snapshot apply in order', () => {
  const s = fresh();
  feed(s, 0, incoming(1, 'c-1'));
  events(s);
  sent(s);
  feed(s, 10, { type: 'event', seq: 3, event: { type: 'incoming_ended', call_id: 'c-2', reason: 'canceled' } });
  assert.equal(s.lastSeq, 1);
  s.handleTimeout(1009);
  assert.deepEqual(sent(s), []);
  s.handleTimeout(1010);
  const [sync] = sent(s);
  assert.equal(sync.type, 'sync');
  feed(s, 1020, {
    type: 'sync', re: sync.id, seq: 2,
    calls: [{ call_id: 'c-2', role: 'callee', caller: ALICE, caller_device: 'web', call_type: 'video', callees: [BOB], state: 'ringing', ring_remaining_ms: 20000, ring_timeout_ms: 30000 }],
    ended: [{ call_id: 'c-1', reason: 'timeout' }],
  });
  const got = events(s).map((e) => [e.type, e.callId ?? null, e.reason ?? null]);
  assert.deepEqual(got, [
    ['IncomingCallTimeout', 'c-1', 'timeout'],
    ['IncomingCallReceived', 'c-2', null],
    ['Resynced', null, null],
  ]);
  assert.equal(s.lastSeq, 2);
  feed(s, 1030, { type: 'event', seq: 3, event: { type: 'incoming_ended', call_id: 'c-2', reason: 'canceled' } });
  assert.deepEqual(events(s).map((e) => [e.type, e.callId]), [['IncomingCallCanceled', 'c-2']]);
});

test('events held ahead of a gap are bounded: past 64 the session asks for a sync', () => {
  const s = fresh();
  for (let seq = 2; seq < 2 + 64; seq++) feed(s, 0, { type: 'event', seq, event: { type: 'call_ended', call_id: `c-${seq}`, reason: 'hung_up' } });
  assert.equal(s.ahead.size, 64);
  assert.deepEqual(sent(s), []);
  feed(s, 0, { type: 'event', seq: 66, event: { type: 'call_ended', call_id: 'c-66', reason: 'hung_up' } });
  assert.equal(s.ahead.size, 0);
  assert.deepEqual(sent(s).map((m) => m.type), ['sync']);
});

test('the calls remembered as ended are bounded', () => {
  const s = new Session({ user: 'bob', device: 'phone', config: { rememberedCalls: 10 } });
  s.handleConnected(0, 'tok');
  for (let i = 0; i < 25; i++) s.finish(`c-${i}`);
  assert.equal(s.ended.size, 10);
  assert.ok(s.ended.has('c-24') && !s.ended.has('c-14'));
});

test('the fallback ends a ring the server never ended: ring time plus 5 s', () => {
  const s = fresh();
  feed(s, 0, incoming(1, 'c-1', 10000));
  events(s);
  s.handleDisconnected(1000);
  events(s);
  s.handleTimeout(14999);
  assert.deepEqual(events(s), []);
  s.handleTimeout(15000);
  assert.deepEqual(events(s), [{ type: 'IncomingCallTimeout', callId: 'c-1', caller: ALICE, reason: 'timeout' }]);
});

test('too little ring time left: the call is known but does not ring (no callback, no receipt)', () => {
  const s = fresh();
  feed(s, 0, incoming(1, 'c-1', 4000));
  assert.deepEqual(events(s), []);
  assert.deepEqual(sent(s), []);
  feed(s, 0, { type: 'event', seq: 2, event: { type: 'incoming_ended', call_id: 'c-1', reason: 'timeout' } });
  assert.deepEqual(events(s), [], 'a call that never rang here ends silently');
});

test('the caller side: outcomes map to the caller callbacks once each, timeout carries the invite data', () => {
  const s = new Session({ user: 'alice', device: 'web', prefix: 'a' });
  s.handleConnected(0, 'tok');
  const [hello] = sent(s);
  feed(s, 0, { type: 'welcome', re: hello.id, user: ALICE, device: 'web', seq: 0, resumed: false });
  feed(s, 0, { type: 'sync', seq: 0, calls: [], ended: [] });
  events(s);
  const id = s.command(0, { type: 'invite', callees: ['bob', 'carol', 'dave', 'erin'], call_type: 'voice', custom_data: 'room-1' });
  sent(s);
  const callees = ['bob', 'carol', 'dave', 'erin'].map((u) => ({ id: u, name: '' }));
  feed(s, 10, {
    type: 'event', seq: 1, re: id,
    result: { type: 'invited', call_id: 'c-9', ring_remaining_ms: 30000, callees: callees.map((c) => ({ user: c.id, status: 'ringing' })) },
    event: { type: 'outgoing_call', call_id: 'c-9', device: 'web', call_type: 'voice', callees, custom_data: 'room-1', ring_remaining_ms: 30000 },
  });
  const outcome = (seq, callee, reason, data) => feed(s, 20, { type: 'event', seq, event: { type: 'callee_outcome', call_id: 'c-9', callee, reason, custom_data: data } });
  outcome(2, 'carol', 'declined', 'no');
  outcome(3, 'dave', 'busy', 'meeting');
  outcome(4, 'erin', 'timeout');
  outcome(5, 'bob', 'accepted', 'hi');
  outcome(6, 'bob', 'declined'); // a second outcome for bob: never twice
  assert.deepEqual(completions(s)[0][1].result.call_id, 'c-9');
  assert.deepEqual(events(s), [
    { type: 'OutgoingCallDeclined', callId: 'c-9', callee: 'carol', customData: 'no', reason: 'declined' },
    { type: 'OutgoingCallRejectedCauseBusy', callId: 'c-9', callee: 'dave', customData: 'meeting', reason: 'busy' },
    { type: 'OutgoingCallTimeout', callId: 'c-9', callee: 'erin', customData: 'room-1', reason: 'timeout' },
    { type: 'OutgoingCallAccepted', callId: 'c-9', callee: 'bob', customData: 'hi', reason: 'accepted' },
  ]);
});

test('a pong ahead of the position reveals a lost tail: after 1 s the session asks for a sync', () => {
  const s = fresh();
  feed(s, 0, incoming(1, 'c-1'));
  events(s);
  sent(s);
  feed(s, 100, { type: 'pong', re: 'p', seq: 1 });
  s.handleTimeout(5000);
  assert.deepEqual(sent(s), [], 'a pong at the position is no news');
  feed(s, 5000, { type: 'pong', re: 'p', seq: 3 });
  s.handleTimeout(5999);
  assert.deepEqual(sent(s), []);
  s.handleTimeout(6000);
  assert.deepEqual(sent(s).map((m) => m.type), ['sync']);
});
