// The demo page in real headless Chromium (the distribution's package,
// driven by playwright-core): pages as users of one invitation-server
// started with --dev-demo. Every wait waits for a selector or text, with a
// deadline; nothing sleeps. Screenshots go to clients/js/test-artifacts/.
//
// CHROMIUM=/path/to/chromium overrides /usr/bin/chromium.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { ROOT, startServer } from '../harness.js';

const ARTIFACTS = join(ROOT, 'clients', 'js', 'test-artifacts');
const DEADLINE = 10000;

let server;
let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer({ secret: 'browser-test-secret-0123456789', shed_invites_after_ms: 0 }, { extraArgs: ['--dev-demo'] });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // playwright gives each launch a fresh temporary user-data-dir
    ],
    timeout: 30000,
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page (in its own browser context unless one is given) signed in as `user`. */
async function open(user, context) {
  const ctx = context ?? await browser.newContext({ viewport: { width: 520, height: 760 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.errors = errors;
  await page.goto(`${server.http}/demo/?user=${encodeURIComponent(user)}`);
  await text(page, '#status', 'connected');
  return page;
}

/** Waits until `selector`'s text equals (or, with a RegExp, matches) `want`. */
async function text(page, selector, want) {
  try {
    await page.waitForFunction(([sel, src, flags]) => {
      const el = document.querySelector(sel);
      if (!el) return false;
      const t = el.textContent.trim();
      return flags === null ? t === src : new RegExp(src, flags).test(t);
    }, [selector, want instanceof RegExp ? want.source : want, want instanceof RegExp ? want.flags : null], { timeout: DEADLINE });
  } catch (e) {
    const got = await page.locator(selector).first().textContent().catch(() => '<no such element>');
    throw new Error(`${selector}: expected ${want}, still ${JSON.stringify(got?.trim())} after ${DEADLINE} ms`);
  }
}

async function visible(page, selector) {
  await page.locator(selector).waitFor({ state: 'visible', timeout: DEADLINE });
}

/** The callback log of a page, oldest first, without timestamps. */
async function callbacks(page) {
  const items = await page.locator('#log li').allTextContents();
  return items.reverse().map((t) => t.replace(/^\S+\s(?:[AP]M\s)?/, ''));
}

/** From `page`, calls `callees` (each must show up in the online list). */
async function call(page, callees, { video = false, ringS } = {}) {
  for (const c of callees) {
    const box = page.locator(`#users li[data-user="${c}"] input`);
    await box.waitFor({ state: 'visible', timeout: DEADLINE });
    await box.check();
  }
  if (video) await page.locator('#type-video').check();
  if (ringS !== undefined) await page.locator('#ring-timeout').fill(String(ringS));
  await page.locator('#call').click();
  await visible(page, '#outgoing');
}

function callIdOf(lines, prefix) {
  const line = lines.find((l) => l.startsWith(prefix));
  assert.ok(line, `no ${prefix} in ${JSON.stringify(lines)}`);
  return line.split(' ')[1];
}

async function closeAll(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.errors, [], 'no uncaught errors on the page');
    await p.context().close();
  }
}

test('call, ring, accept: both pages show the connected video call; hang up ends it on both', async () => {
  const alice = await open('alice');
  const bob = await open('bob');
  await call(alice, ['bob'], { video: true });
  await text(alice, '#out-names', 'bob');
  await text(alice, '#out-type', 'Video call');
  await text(alice, '#out-countdown', /^(30|29|28|27) s$/);
  await text(alice, '#out-callees li[data-callee="bob"] .state', /^ringing/);
  await visible(bob, '#incoming');
  await text(bob, '#in-caller', 'alice');
  await text(bob, '#in-type', 'Video call');
  await text(bob, '#in-countdown', /^(30|29|28|27|26) s$/);
  await alice.screenshot({ path: join(ARTIFACTS, 'calling-caller.png') });
  await bob.screenshot({ path: join(ARTIFACTS, 'ringing-callee.png') });
  await bob.locator('#accept').click();
  await visible(bob, '#in-call');
  await visible(alice, '#in-call');
  await text(bob, '#call-with', 'alice');
  await text(alice, '#call-with', 'bob');
  await text(alice, '#call-type', 'Video call');
  await visible(alice, '#call-video');
  await alice.screenshot({ path: join(ARTIFACTS, 'connected-caller.png') });
  await bob.screenshot({ path: join(ARTIFACTS, 'connected-callee.png') });
  // The callbacks, in order, with their data.
  const b = await callbacks(bob);
  const id = callIdOf(b, 'onIncomingCallReceived');
  assert.deepEqual(b, [`onIncomingCallReceived ${id} from alice video`, `onIncomingCallAcceptButtonPressed ${id}`]);
  assert.deepEqual(await callbacks(alice), [`onOutgoingCallAccepted ${id} bob`]);
  await alice.locator('#hangup').click();
  await visible(alice, '#idle');
  await visible(bob, '#idle');
  await text(alice, '#notice', 'Call ended');
  await text(bob, '#notice', 'Call ended');
  assert.deepEqual((await callbacks(bob)).slice(2), [`CallEnded ${id} hung_up`]);
  await closeAll(alice, bob);
});

test('decline: the callee declines, the caller hears it', async () => {
  const caller = await open('carol');
  const callee = await open('dave');
  await call(caller, ['dave']);
  await visible(callee, '#incoming');
  await text(callee, '#in-type', 'Voice call');
  await callee.locator('#decline').click();
  await visible(callee, '#idle');
  await text(callee, '#notice', 'You declined');
  await visible(caller, '#idle');
  await text(caller, '#notice', 'dave declined');
  const c = await callbacks(callee);
  const id = callIdOf(c, 'onIncomingCallReceived');
  assert.deepEqual(c, [`onIncomingCallReceived ${id} from carol voice`, `onIncomingCallDeclineButtonPressed ${id} declined`]);
  assert.deepEqual(await callbacks(caller), [`onOutgoingCallDeclined ${id} dave`, `CallEnded ${id} declined`]);
  await closeAll(caller, callee);
});

test('cancel: the caller cancels while it rings', async () => {
  const caller = await open('erin');
  const callee = await open('frank');
  await call(caller, ['frank']);
  await visible(callee, '#incoming');
  await caller.locator('#cancel').click();
  await visible(caller, '#idle');
  await text(caller, '#notice', 'You canceled the call');
  await visible(callee, '#idle');
  await text(callee, '#notice', 'erin canceled the call');
  const c = await callbacks(callee);
  const id = callIdOf(c, 'onIncomingCallReceived');
  assert.deepEqual(c, [`onIncomingCallReceived ${id} from erin voice`, `onIncomingCallCanceled ${id} canceled`]);
  assert.deepEqual(await callbacks(caller), [`onOutgoingCallCancelButtonPressed ${id}`, `CallEnded ${id} canceled`]);
  await closeAll(caller, callee);
});

test('busy: calling someone already in a call is rejected as busy', async () => {
  const gina = await open('gina');
  const hank = await open('hank');
  const ivan = await open('ivan');
  await call(gina, ['hank']);
  await visible(hank, '#incoming');
  await hank.locator('#accept').click();
  await visible(gina, '#in-call');
  await call(ivan, ['hank']).catch(async (e) => {
    // The outcome may come back before the outgoing screen is drawn.
    if (!(await ivan.locator('#idle').isVisible())) throw e;
  });
  await visible(ivan, '#idle');
  await text(ivan, '#notice', 'hank is busy');
  const lines = await callbacks(ivan);
  assert.equal(lines.length, 2, JSON.stringify(lines));
  assert.match(lines[0], /^onOutgoingCallRejectedCauseBusy \S+ hank$/);
  assert.match(lines[1], /^CallEnded \S+ busy$/);
  // Hank never rang for Ivan's call and is still with Gina.
  await visible(hank, '#in-call');
  assert.equal((await callbacks(hank)).filter((l) => l.startsWith('onIncomingCallReceived')).length, 1);
  await closeAll(gina, hank, ivan);
});

test('timeout: nobody answers within a 2 s ring', async () => {
  const caller = await open('judy');
  const callee = await open('ken');
  await call(caller, ['ken'], { ringS: 2 });
  await visible(callee, '#incoming');
  await visible(callee, '#idle');
  await text(callee, '#notice', 'Missed call from judy');
  await visible(caller, '#idle');
  await text(caller, '#notice', 'No answer from ken');
  const c = await callbacks(callee);
  const id = callIdOf(c, 'onIncomingCallReceived');
  assert.deepEqual(c, [`onIncomingCallReceived ${id} from judy voice`, `onIncomingCallTimeout ${id}`]);
  assert.deepEqual(await callbacks(caller), [`onOutgoingCallTimeout ${id} ken`, `CallEnded ${id} timeout`]);
  await closeAll(caller, callee);
});

test('two tabs of the callee: both ring, one accepts, the other shows "answered on another device"', async () => {
  const caller = await open('liam');
  const ctx = await browser.newContext({ viewport: { width: 520, height: 760 } });
  const tab1 = await open('mia', ctx);
  const tab2 = await open('mia', ctx);
  const d1 = await tab1.locator('#device').textContent();
  const d2 = await tab2.locator('#device').textContent();
  assert.notEqual(d1, d2, 'each tab is its own device');
  await caller.locator('#users li[data-user="mia"] .badge').filter({ hasText: '2 devices' }).waitFor({ timeout: DEADLINE });
  await call(caller, ['mia']);
  await visible(tab1, '#incoming');
  await visible(tab2, '#incoming');
  await tab2.locator('#accept').click();
  await visible(tab2, '#in-call');
  await visible(caller, '#in-call');
  await visible(tab1, '#idle');
  await text(tab1, '#notice', 'Answered on another device');
  await tab1.screenshot({ path: join(ARTIFACTS, 'answered-elsewhere.png') });
  const t1 = await callbacks(tab1);
  const id = callIdOf(t1, 'onIncomingCallReceived');
  assert.deepEqual(t1, [`onIncomingCallReceived ${id} from liam voice`, `onIncomingCallCanceled ${id} answered_elsewhere`]);
  assert.deepEqual(await callbacks(tab2), [`onIncomingCallReceived ${id} from liam voice`, `onIncomingCallAcceptButtonPressed ${id}`]);
  await closeAll(caller, tab1, tab2);
});

test('a group call: two callees, one accepts, one declines', async () => {
  const caller = await open('nora');
  const oscar = await open('oscar');
  const pia = await open('pia');
  await call(caller, ['oscar', 'pia']);
  await text(caller, '#out-names', /^(oscar, pia|pia, oscar)$/);
  await visible(oscar, '#incoming');
  await visible(pia, '#incoming');
  await text(oscar, '#in-others', 'also ringing: pia');
  await pia.locator('#decline').click();
  await text(caller, '#out-callees li[data-callee="pia"] .state', 'declined');
  await oscar.locator('#accept').click();
  await visible(caller, '#in-call');
  await text(caller, '#call-with', 'oscar');
  const lines = await callbacks(caller);
  const id = callIdOf(await callbacks(oscar), 'onIncomingCallReceived');
  assert.deepEqual(lines, [`onOutgoingCallDeclined ${id} pia`, `onOutgoingCallAccepted ${id} oscar`]);
  await caller.screenshot({ path: join(ARTIFACTS, 'connected-group-caller.png') });
  // The end of the call is news, not Pia's earlier decline.
  await oscar.locator('#hangup').click();
  await visible(caller, '#idle');
  await text(caller, '#notice', 'Call ended');
  await text(oscar, '#notice', 'Call ended');
  await closeAll(caller, oscar, pia);
});

test('an offline callee: the invitation is held and rings when they come online', async () => {
  const first = await open('quinn');
  await first.context().close(); // quinn goes offline (but the demo knows the name)
  const caller = await open('rosa');
  await caller.locator('#users li[data-user="quinn"] .badge').filter({ hasText: 'offline' }).waitFor({ timeout: DEADLINE });
  await call(caller, ['quinn']);
  await text(caller, '#out-callees li[data-callee="quinn"] .state', 'offline');
  const quinn = await open('quinn');
  await visible(quinn, '#incoming');
  await text(quinn, '#in-caller', 'rosa');
  await text(caller, '#out-callees li[data-callee="quinn"] .state', /^ringing/);
  await quinn.locator('#busy').click();
  await visible(quinn, '#idle');
  await text(quinn, '#notice', 'You said you are busy');
  await visible(caller, '#idle');
  await text(caller, '#notice', 'quinn is busy');
  const q = await callbacks(quinn);
  const id = callIdOf(q, 'onIncomingCallReceived');
  assert.deepEqual(q, [`onIncomingCallReceived ${id} from rosa voice`, `onIncomingCallDeclineButtonPressed ${id} busy`]);
  assert.deepEqual(await callbacks(caller), [`onOutgoingCallRejectedCauseBusy ${id} quinn`, `CallEnded ${id} busy`]);
  await closeAll(caller, quinn);
});
