// Plays every conformance vector under tests/vectors/ (recursively) with
// the JS client: server vectors against the real invitation-server binary
// (a fresh one per vector, with the vector's settings) over WebSockets,
// every message received decoded by the client's wire layer
// (decodeServerMessage); client vectors against the JS Session with
// virtual time. The format: docs/protocol.md, "Conformance vectors".
// VECTOR=<part of a path> plays only the matching files.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import WebSocket from 'ws';

import { decodeServerMessage, encodeClientMessage, Session } from '../index.js';
import { ROOT, startServer, mintToken } from './harness.js';
import { check, fill } from './pattern.js';

const DIR = join(ROOT, 'tests', 'vectors');
const SECRET = 'conformance-secret-0123456789';
const DEFAULT_WITHIN_MS = 5000;
const SHOWN = 6;
/** The ten callbacks' events: each fires at most once per call (and callee). */
const ONCE = ['IncomingCallReceived', 'IncomingCallCanceled', 'IncomingCallTimeout', 'IncomingCallAcceptButtonPressed',
  'IncomingCallDeclineButtonPressed', 'OutgoingCallCancelButtonPressed', 'OutgoingCallAccepted',
  'OutgoingCallRejectedCauseBusy', 'OutgoingCallDeclined', 'OutgoingCallTimeout'];

function find(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...find(p));
    else if (name.endsWith('.json')) out.push(p);
  }
  return out.sort();
}

const only = process.env.VECTOR;
const files = find(DIR).filter((p) => !only || p.includes(only));
const names = new Map();

test('the vectors are all found', () => {
  assert.ok(only ? files.length > 0 : files.length >= 60, `only ${files.length} vectors under ${DIR}`);
});

for (const file of files) {
  const shown = relative(DIR, file);
  test(`vector ${shown}`, { timeout: 120000 }, async () => {
    const v = JSON.parse(readFileSync(file, 'utf8'));
    assert.ok(typeof v.description === 'string' && v.description.trim(), 'the description must say what the vector proves');
    assert.ok(!names.has(v.name), `name ${v.name} is also used by ${names.get(v.name)}`);
    names.set(v.name, shown);
    if (v.kind === 'client') playClient(v);
    else if (v.kind === undefined) await playServer(v);
    else assert.fail(`unknown vector kind ${v.kind}`);
  });
}

// ----- server vectors -------------------------------------------------------

const STEP_KEYS = {
  connect: ['last_seq', 'welcome', 'sync'],
  open: [],
  send: ['msg', 'raw'],
  expect: ['msg', 'within_ms', 'elapsed_ms', 'since'],
  expect_closed: ['code', 'within_ms'],
  silent: ['ms'],
  wait_ms: [],
  close: [],
  mark: [],
  shutdown: [],
  repeat: ['steps'],
};

class Conn {
  constructor(name, spec) {
    this.name = name;
    this.spec = spec;
    this.ws = null;
    this.queue = [];
    this.waiter = null;
    this.seen = [];
  }

  /**
   * A JS client session shadowing this connection: every message the
   * connection receives is fed to it, so each vector also proves the
   * session takes everything the server says and fires each callback at
   * most once per call (per callee for the caller's outcome callbacks).
   */
  shadowStart(lastSeq) {
    this.session = new Session({ user: this.spec.user, device: this.spec.device, prefix: 'shadow' });
    this.session.lastSeq = lastSeq ?? null;
    this.session.handleConnected(performance.now(), undefined);
    this.session.pollTransmit(); // its hello: the player sends the vector's own
    this.fired = this.fired ?? new Set();
  }

  shadow(decoded) {
    if (!this.session) return;
    const now = performance.now();
    this.session.handleMessage(now, decoded);
    let e;
    while ((e = this.session.pollEvent())) {
      if (!ONCE.includes(e.type)) continue;
      const key = `${e.type} ${e.callId} ${e.callee ?? ''}`;
      if (this.fired.has(key)) throw new Error(`${this.name}: the JS session fired ${key} twice`);
      this.fired.add(key);
    }
    while (this.session.pollTransmit());
    while (this.session.pollCompletion());
  }

  open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const t = setTimeout(() => reject(new Error('the WebSocket upgrade took too long')), DEFAULT_WITHIN_MS);
      ws.on('open', () => { clearTimeout(t); resolve(); });
      ws.on('error', (e) => { clearTimeout(t); reject(new Error(`WebSocket: ${e.message}`)); });
      ws.on('message', (data, binary) => this.push(binary ? { text: '<a binary frame>' } : { text: data.toString('utf8') }));
      ws.on('close', (code) => this.push(code === 1006 ? { eof: true } : { closed: code }));
      this.ws = ws;
    });
  }

  push(item) {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(item);
    } else {
      this.queue.push(item);
    }
  }

  /** The next thing received, or `null` after `ms`. */
  next(ms) {
    if (this.queue.length) return Promise.resolve(this.take(this.queue.shift()));
    if (!this.ws) return Promise.resolve({ eof: true });
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.waiter = null; resolve(null); }, ms);
      this.waiter = (item) => { clearTimeout(t); resolve(this.take(item)); };
    });
  }

  take(item) {
    if (item.text !== undefined) {
      this.seen.push(item.text);
      if (this.seen.length > SHOWN) this.seen.shift();
    } else {
      this.ws = null;
    }
    return item;
  }

  history() {
    return this.seen.length ? `last received: ${this.seen.join('  |  ')}` : 'nothing received yet';
  }
}

async function playServer(v) {
  for (const k of Object.keys(v)) assert.ok(['name', 'description', 'server', 'clients', 'steps'].includes(k), `unknown key ${k}`);
  const server = await startServer({ secret: SECRET, shed_invites_after_ms: 0, ...(v.server ?? {}) });
  const p = { server, conns: new Map(), bindings: {}, marks: new Map(), stopped: false };
  for (const [k, spec] of Object.entries(v.clients)) p.conns.set(k, new Conn(k, spec));
  try {
    await steps(p, v.steps, '');
  } finally {
    for (const c of p.conns.values()) c.ws?.terminate();
    await server.stop();
  }
}

function conn(p, name) {
  const c = p.conns.get(name);
  if (!c) throw new Error(`no client ${JSON.stringify(name)} in clients`);
  return c;
}

function fillMsg(p, template) {
  return fill(template, p.bindings, (o) => {
    if (!('$token' in o)) return undefined;
    for (const k of Object.keys(o)) if (!['$token', 'secret', 'ttl_s'].includes(k)) throw new Error(`unknown key ${k} in $token`);
    const spec = conn(p, o.$token).spec;
    return mintToken({ secret: o.secret ?? SECRET, user: spec.user, name: spec.name ?? spec.user, ttlS: o.ttl_s ?? 3600 });
  });
}

async function steps(p, list, prefix) {
  for (const [i, raw] of list.entries()) {
    const at = `${prefix}${i}`;
    try {
      await step(p, raw, at);
    } catch (e) {
      throw new Error(`step ${at} ${JSON.stringify(raw)}:\n    ${e.message}`);
    }
  }
}

async function expectMsg(p, name, pattern, ms) {
  const c = conn(p, name);
  const got = await c.next(ms);
  if (got === null) throw new Error(`${name}: nothing arrived within ${ms} ms; expected ${JSON.stringify(pattern)}; ${c.history()}`);
  if (got.text === undefined) throw new Error(`${name}: the connection ended (${JSON.stringify(got)}); expected ${JSON.stringify(pattern)}; ${c.history()}`);
  // Whatever a vector says, the server speaks valid v1 the client decodes.
  let decoded;
  try {
    decoded = decodeServerMessage(got.text);
  } catch (e) {
    throw new Error(`${name}: the client refuses it (${e.message}): ${got.text}`);
  }
  if (decoded.type === 'unknown' || (decoded.type === 'event' && decoded.event === null)) {
    throw new Error(`${name}: not a v1 message type the client knows: ${got.text}`);
  }
  c.shadow(decoded);
  try {
    check(pattern, JSON.parse(got.text), p.bindings);
  } catch (e) {
    throw new Error(`${name}: expected ${JSON.stringify(pattern)}\n    got      ${got.text}\n    ${e.message}`);
  }
}

async function step(p, s, at) {
  assert.ok(s && typeof s === 'object' && !Array.isArray(s), 'a step is a JSON object');
  const kinds = Object.keys(STEP_KEYS).filter((k) => k in s);
  if (kinds.length !== 1) throw new Error(`a step has exactly one of ${Object.keys(STEP_KEYS)}, this one ${kinds}`);
  const [kind] = kinds;
  for (const k of Object.keys(s)) {
    if (k !== kind && k !== 'comment' && !STEP_KEYS[kind].includes(k)) throw new Error(`unknown key ${k} in a ${kind} step`);
  }
  const within = s.within_ms ?? DEFAULT_WITHIN_MS;
  switch (kind) {
    case 'connect': {
      const c = conn(p, s.connect);
      await c.open(p.server.url);
      c.shadowStart(typeof s.last_seq === 'number' ? s.last_seq : (s.last_seq === undefined ? null : fill(s.last_seq, p.bindings)));
      const hello = { type: 'hello', device: c.spec.device, token: { $token: s.connect } };
      if (s.last_seq !== undefined) hello.last_seq = s.last_seq;
      c.ws.send(encodeClientMessage('hello', fillMsg(p, hello)));
      await expectMsg(p, s.connect, { type: 'welcome', re: 'hello', ...(s.welcome ?? {}) }, DEFAULT_WITHIN_MS);
      if (s.last_seq === undefined) await expectMsg(p, s.connect, { type: 'sync', re: '$absent', ...(s.sync ?? {}) }, DEFAULT_WITHIN_MS);
      return;
    }
    case 'open': {
      const c = conn(p, s.open);
      await c.open(p.server.url);
      c.session = null; // a raw connection: what it gets is not a session's
      return;
    }
    case 'send': {
      const c = conn(p, s.send);
      if (!c.ws) throw new Error(`${s.send} is not connected`);
      if (('msg' in s) === ('raw' in s)) throw new Error('a send step has one of msg, raw');
      c.ws.send('msg' in s ? JSON.stringify(fillMsg(p, s.msg)) : s.raw);
      return;
    }
    case 'expect': {
      await expectMsg(p, s.expect, s.msg, within);
      if (s.elapsed_ms !== undefined) {
        const from = p.marks.get(s.since);
        if (from === undefined) throw new Error(`no mark ${s.since}`);
        const ms = Math.round(performance.now() - from);
        try {
          check(s.elapsed_ms, ms, p.bindings);
        } catch (e) {
          throw new Error(`${s.expect}: arrived ${ms} ms after mark ${s.since}, expected ${JSON.stringify(s.elapsed_ms)}: ${e.message}`);
        }
      }
      return;
    }
    case 'expect_closed': {
      const c = conn(p, s.expect_closed);
      const got = await c.next(within);
      if (got === null) throw new Error(`${s.expect_closed}: still open after ${within} ms; ${c.history()}`);
      if (got.text !== undefined) throw new Error(`${s.expect_closed}: expected the connection to close, got ${got.text}`);
      if (s.code !== undefined) {
        if (got.eof) throw new Error(`${s.expect_closed}: the stream ended without a close frame, expected code ${s.code}`);
        if (got.closed !== s.code) throw new Error(`${s.expect_closed}: closed with ${got.closed}, expected ${s.code}`);
      }
      return;
    }
    case 'silent': {
      const c = conn(p, s.silent);
      const got = await c.next(s.ms);
      if (got !== null) {
        throw new Error(`${s.silent}: expected silence for ${s.ms} ms, got ${JSON.stringify(got)}`);
      }
      return;
    }
    case 'wait_ms':
      await new Promise((r) => setTimeout(r, s.wait_ms));
      return;
    case 'close': {
      const c = conn(p, s.close);
      if (!c.ws) return;
      const ws = c.ws;
      await new Promise((resolve) => {
        const t = setTimeout(resolve, DEFAULT_WITHIN_MS);
        ws.on('close', () => { clearTimeout(t); resolve(); });
        ws.close(1000);
      });
      c.ws = null;
      c.queue = [];
      return;
    }
    case 'mark':
      p.marks.set(s.mark, performance.now());
      return;
    case 'shutdown':
      if (p.stopped) throw new Error('the server is already stopped');
      p.stopped = true;
      p.server.terminate();
      return;
    case 'repeat':
      for (let n = 0; n < s.repeat; n++) {
        const outer = { ...p.bindings };
        p.bindings.round = n;
        await steps(p, s.steps, `${at}.${n}.`);
        p.bindings = outer;
      }
      return;
    default:
      throw new Error(`unknown step ${kind}`);
  }
}

// ----- client vectors -------------------------------------------------------

function playClient(v) {
  assert.equal(v.kind, 'client');
  let now = 1_000_000;
  const session = new Session({ user: v.user, device: v.device, prefix: 'v' });
  session.handleConnected(now, undefined);
  const bindings = {};
  for (const [i, s] of v.steps.entries()) {
    const fail = (why) => { throw new Error(`step ${i} ${JSON.stringify(s)}:\n    ${why}`); };
    const keys = Object.keys(s).filter((k) => k !== 'comment').sort();
    const key = keys.join(',');
    if (key === 'receive' || key === 'receive,refused') {
      const text = JSON.stringify(fill(s.receive, bindings));
      let m;
      let error;
      try {
        m = decodeServerMessage(text);
      } catch (e) {
        error = e;
      }
      if (s.refused === true) {
        if (!error) fail(`the client accepted ${JSON.stringify(m)}`);
        assert.equal(error.name, 'ProtocolError');
      } else {
        if (error) fail(`the client refused it: ${error.message}`);
        session.handleMessage(now, m);
      }
    } else if (key === 'position') {
      if (session.lastSeq !== s.position) fail(`the client is at ${session.lastSeq}, expected ${s.position}`);
    } else if (key === 'sent') {
      const sent = [];
      let out;
      while ((out = session.pollTransmit())) sent.push(JSON.parse(encodeClientMessage(out.id, out.body)));
      const shown = sent.map((m) => JSON.stringify(m)).join('  |  ');
      if (sent.length !== s.sent.length) fail(`the client sent ${sent.length} messages, expected ${s.sent.length}: ${shown}`);
      s.sent.forEach((pattern, j) => {
        try {
          check(pattern, sent[j], bindings);
        } catch (e) {
          fail(`sent ${JSON.stringify(sent[j])}: ${e.message}`);
        }
      });
    } else if (key === 'reconnect') {
      session.handleDisconnected(now);
      session.handleConnected(now, undefined);
    } else if (key === 'wait_ms') {
      now += s.wait_ms;
      session.handleTimeout(now);
    } else {
      fail('a client step is one of receive (+ refused), position, sent, reconnect, wait_ms');
    }
  }
}
