// The development demo page: one user per tab, the JavaScript client, the
// ten callbacks driving the screens. Served by invitation-server at /demo/
// when `dev_demo` is on.
import { init, CommandError } from './invitation/index.js';

const $ = (id) => document.getElementById(id);
const screens = ['idle', 'outgoing', 'incoming', 'in-call'];

let client = null;
let me = null;
/** The call this tab shows: {id, role: 'caller'|'callee', type, peers, deadline, callees: Map} */
let call = null;
let ticker = null;
let usersTimer = null;

function show(screen) {
  for (const s of screens) $(s).hidden = s !== screen;
}

function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
}

function log(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function secondsLeft(deadline) {
  return Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
}

function tick() {
  if (!call) return;
  if (call.deadline !== undefined) {
    const s = `${secondsLeft(call.deadline)} s`;
    $('out-countdown').textContent = s;
    $('in-countdown').textContent = s;
  }
  if (call.since !== undefined) {
    const t = Math.floor((performance.now() - call.since) / 1000);
    $('call-timer').textContent = `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
  }
}

function startTicker() {
  clearInterval(ticker);
  ticker = setInterval(tick, 250);
  tick();
}

function idle(text) {
  call = null;
  clearInterval(ticker);
  show('idle');
  if (text !== undefined) notice(text);
  refreshUsers();
}

function nameOf(user) {
  return user.name || user.id;
}

// ----- who is online ---------------------------------------------------------

async function refreshUsers() {
  if (!me) return;
  let list;
  try {
    const r = await fetch('users', { cache: 'no-store' });
    if (!r.ok) return;
    list = await r.json();
  } catch {
    return;
  }
  const ul = $('users');
  const checked = new Set([...ul.querySelectorAll('input:checked')].map((i) => i.value));
  ul.replaceChildren();
  // Online first (newest first within each group); offline users can be
  // called too: the server holds the invitation until they connect.
  const others = list.filter((u) => u.user !== me.id).sort((a, b) => Number(b.online) - Number(a.online));
  if (!others.length) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'nobody else yet';
    ul.append(li);
  }
  for (const u of others) {
    const li = document.createElement('li');
    li.dataset.user = u.user;
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.value = u.user;
    box.checked = checked.has(u.user);
    box.addEventListener('change', updateCallButton);
    label.append(box, document.createTextNode(u.name && u.name !== u.user ? `${u.name} (${u.user})` : u.user));
    const badge = document.createElement('span');
    const state = !u.online ? 'offline' : u.in_call ? 'in_call' : u.ringing ? 'ringing' : u.calling ? 'calling' : 'online';
    if (!u.online) li.classList.add('off');
    badge.className = `badge ${state}`;
    badge.textContent = { in_call: 'in a call', ringing: 'ringing', calling: 'calling', online: 'online', offline: 'offline' }[state]
      + (u.online && u.devices.length > 1 ? ` · ${u.devices.length} devices` : '')
      + (!u.online && u.in_call ? ' · in a call' : '');
    li.append(label, badge);
    ul.append(li);
  }
  updateCallButton();
}

function updateCallButton() {
  $('call').disabled = !$('users').querySelector('input:checked') || client?.state !== 'connected';
}

// ----- actions -------------------------------------------------------------------

async function run(action, what) {
  try {
    return await action();
  } catch (e) {
    const code = e instanceof CommandError ? ` (${e.code}${e.reason ? `: ${e.reason}` : ''})` : '';
    notice(`${what} failed${code}: ${e.message}`);
    log(`${what} failed: ${e.code ?? ''} ${e.message}`);
    return undefined;
  }
}

async function placeCall() {
  const callees = [...$('users').querySelectorAll('input:checked')].map((i) => i.value);
  if (!callees.length) return;
  const callType = $('type-video').checked ? 'video' : 'voice';
  const timeoutS = Number($('ring-timeout').value) || undefined;
  notice('');
  const r = await run(() => client.invite(callees, { callType, timeoutS }), 'Call');
  if (!r) return;
  if (r.type === 'joined') {
    // Glare: they were calling us; our call accepted theirs.
    return;
  }
  if (call && call.id === r.callId) return; // the events got here first
  call = { id: r.callId, role: 'caller', type: callType, deadline: performance.now() + r.ringRemainingMs, callees: new Map() };
  for (const c of r.callees) call.callees.set(c.user, c.status);
  renderOutgoing();
  show('outgoing');
  startTicker();
}

function renderOutgoing() {
  const names = [...call.callees.keys()];
  $('out-names').textContent = names.join(', ');
  $('out-avatar').textContent = names[0]?.[0] ?? '?';
  $('out-type').textContent = call.type === 'video' ? 'Video call' : 'Voice call';
  const ul = $('out-callees');
  ul.replaceChildren();
  for (const [user, state] of call.callees) {
    const li = document.createElement('li');
    li.dataset.callee = user;
    li.append(document.createTextNode(user));
    const s = document.createElement('span');
    s.className = 'state';
    s.textContent = state;
    li.append(s);
    ul.append(li);
  }
}

function setCallee(callId, callee, state) {
  if (!call || call.id !== callId || call.role !== 'caller') return;
  call.callees.set(callee, state);
  renderOutgoing();
}

function connected(callId, peers, type) {
  call = { ...(call ?? {}), id: callId, peers, type, since: performance.now(), deadline: undefined, last: undefined };
  $('call-with').textContent = peers.join(', ');
  $('call-type').textContent = type === 'video' ? 'Video call' : 'Voice call';
  $('call-video').hidden = type !== 'video';
  $('call-avatar').hidden = type === 'video';
  $('call-avatar').textContent = peers[0]?.[0] ?? '?';
  notice('');
  show('in-call');
  startTicker();
}

// ----- the client and its callbacks ---------------------------------------------

function start(userId) {
  me = { id: userId };
  $('me').textContent = userId;
  let device = sessionStorage.getItem('invitation-demo-device');
  if (!device) {
    device = `tab-${Math.random().toString(36).slice(2, 10)}`;
    sessionStorage.setItem('invitation-demo-device', device);
  }
  $('device').textContent = device;
  $('login').hidden = true;
  $('app').hidden = false;
  show('idle');
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
  client = init({
    url,
    device,
    async tokenProvider() {
      const r = await fetch(`token?user=${encodeURIComponent(userId)}`, { cache: 'no-store' });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error ?? `HTTP ${r.status}`);
      return body.token;
    },
    onConnectionStateChanged(state) {
      $('status').textContent = state;
      $('status').className = `status ${state}`;
      updateCallButton();
      if (state === 'connected') refreshUsers();
    },
    onStopped(error) {
      notice(`Disconnected for good: ${error.message} (${error.code})`);
    },
    onIncomingCallReceived(callID, caller, callType, callees, customData, ctx) {
      log(`onIncomingCallReceived ${callID} from ${caller.id} ${callType}`);
      if (call) return; // one call at a time on this page
      call = { id: callID, role: 'callee', caller, type: callType, deadline: performance.now() + ctx.event.ringRemainingMs };
      $('in-caller').textContent = nameOf(caller);
      $('in-avatar').textContent = nameOf(caller)[0] ?? '?';
      $('in-type').textContent = callType === 'video' ? 'Video call' : 'Voice call';
      const others = callees.filter((u) => u.id !== me.id).map(nameOf);
      $('in-others').textContent = others.length ? `also ringing: ${others.join(', ')}` : '';
      notice('');
      show('incoming');
      startTicker();
    },
    onIncomingCallCanceled(callID, caller, customData, ctx) {
      log(`onIncomingCallCanceled ${callID} ${ctx.reason}`);
      if (call?.id !== callID) return;
      const text = {
        answered_elsewhere: 'Answered on another device',
        declined_elsewhere: 'Declined on another device',
        caller_gone: `${nameOf(caller)} went away`,
      }[ctx.reason] ?? `${nameOf(caller)} canceled the call`;
      idle(text);
    },
    onIncomingCallTimeout(callID, caller) {
      log(`onIncomingCallTimeout ${callID}`);
      if (call?.id === callID) idle(`Missed call from ${nameOf(caller)}`);
    },
    onIncomingCallAcceptButtonPressed(callID) {
      log(`onIncomingCallAcceptButtonPressed ${callID}`);
      if (call?.id === callID) connected(callID, [nameOf(call.caller)], call.type);
    },
    onIncomingCallDeclineButtonPressed(callID, ctx) {
      log(`onIncomingCallDeclineButtonPressed ${callID} ${ctx.reason}`);
      if (call?.id === callID) idle(ctx.reason === 'busy' ? 'You said you are busy' : 'You declined');
    },
    onOutgoingCallCancelButtonPressed(callID) {
      log(`onOutgoingCallCancelButtonPressed ${callID}`);
      if (call?.id === callID) idle('You canceled the call');
    },
    onOutgoingCallAccepted(callID, calleeID) {
      log(`onOutgoingCallAccepted ${callID} ${calleeID}`);
      if (call?.id === callID && call.since !== undefined) {
        // Already connected (a group call): one more person in it.
        call.peers = [...new Set([...(call.peers ?? []), calleeID])];
        $('call-with').textContent = call.peers.join(', ');
      } else if (call?.id === callID && call.role === 'caller') {
        setCallee(callID, calleeID, 'accepted');
        connected(callID, [calleeID], call.type);
      } else if (!call || call.id === callID) {
        // Glare: we called them while their call to us rang; our invite accepted theirs.
        connected(callID, [calleeID], call?.type ?? 'voice');
      }
    },
    onOutgoingCallRejectedCauseBusy(callID, calleeID) {
      log(`onOutgoingCallRejectedCauseBusy ${callID} ${calleeID}`);
      setCallee(callID, calleeID, 'busy');
      call && call.id === callID && (call.last = `${calleeID} is busy`);
    },
    onOutgoingCallDeclined(callID, calleeID) {
      log(`onOutgoingCallDeclined ${callID} ${calleeID}`);
      setCallee(callID, calleeID, 'declined');
      call && call.id === callID && (call.last = `${calleeID} declined`);
    },
    onOutgoingCallTimeout(callID, calleeID) {
      log(`onOutgoingCallTimeout ${callID} ${calleeID}`);
      setCallee(callID, calleeID, 'no answer');
      call && call.id === callID && (call.last = `No answer from ${calleeID}`);
    },
    onEvent(e) {
      switch (e.type) {
        case 'CalleeRinging':
          setCallee(e.callId, e.callee, 'ringing');
          break;
        case 'CalleeDelivered':
          setCallee(e.callId, e.callee, 'ringing (delivered)');
          break;
        case 'ParticipantJoined':
          if (call?.id === e.callId && e.user !== me.id) {
            call.peers = [...new Set([...(call.peers ?? []), e.user])];
            $('call-with').textContent = call.peers.join(', ');
          }
          break;
        case 'ParticipantLeft':
          if (call?.id === e.callId) {
            call.peers = (call.peers ?? []).filter((u) => u !== e.user);
            $('call-with').textContent = call.peers.join(', ');
          }
          break;
        case 'CallEnded':
          log(`CallEnded ${e.callId} ${e.reason}`);
          if (call?.id === e.callId) {
            const text = call.last ?? {
              hung_up: 'Call ended', timeout: 'No answer', declined: 'Declined', busy: 'Busy',
              canceled: 'Canceled', server_shutdown: 'The server stopped',
            }[e.reason] ?? `Call ended (${e.reason})`;
            idle(text);
          }
          break;
        default:
          break;
      }
    },
  });
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const userId = $('user').value.trim();
  if (userId) {
    sessionStorage.setItem('invitation-demo-user', userId);
    start(userId);
  }
});
$('call').addEventListener('click', placeCall);
$('cancel').addEventListener('click', () => call && run(() => client.cancel(call.id), 'Cancel'));
$('accept').addEventListener('click', () => call && run(() => client.accept(call.id), 'Accept'));
$('decline').addEventListener('click', () => call && run(() => client.decline(call.id), 'Decline'));
$('busy').addEventListener('click', () => call && run(() => client.declineBusy(call.id), 'Busy'));
$('hangup').addEventListener('click', () => call && run(() => client.hangUp(call.id), 'Hang up'));

const params = new URLSearchParams(location.search);
const preset = params.get('user') ?? sessionStorage.getItem('invitation-demo-user');
if (preset) start(preset);
usersTimer = setInterval(refreshUsers, 2000);
window.addEventListener('pagehide', () => { clearInterval(usersTimer); client?.close(); });
