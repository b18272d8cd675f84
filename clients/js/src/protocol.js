// The v1 wire protocol (docs/protocol.md): decoding server messages with the
// same strictness as the Rust client (a known type with a missing or
// mistyped field is refused; unknown message and event types are skipped,
// an unknown event's seq still counts; unknown fields are ignored; an
// unknown reason reads as "failed", an unknown closing reason as
// "shutting_down"), and encoding client messages.

import { ProtocolError } from './errors.js';

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** Every reason of the protocol (an unknown one decodes as `failed`). */
export const REASONS = Object.freeze([
  'accepted', 'declined', 'busy', 'timeout', 'canceled', 'caller_gone',
  'answered_elsewhere', 'declined_elsewhere', 'unreachable', 'hung_up', 'failed',
  'server_shutdown',
]);

const CLOSE_REASONS = ['replaced', 'shutting_down', 'token_expired', 'protocol_violation',
  'too_slow', 'too_many_devices'];
const LEAVE_REASONS = ['left', 'ended_call'];
const STATUSES = ['ringing', 'offline', 'busy', 'unreachable', 'joined'];
const ID = /^[A-Za-z0-9_\-.:@+]{1,64}$/;

/** True when `s` is a valid user, device, call or request id. */
export function isId(s) {
  return typeof s === 'string' && ID.test(s);
}

function fail(what) {
  throw new ProtocolError(what);
}

function obj(v, what) {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(`${what} is not an object`);
  return v;
}

function str(o, k, what) {
  const v = o[k];
  if (typeof v !== 'string') fail(`${what}.${k} is not a string`);
  return v;
}

function optStr(o, k, what) {
  return o[k] === undefined || o[k] === null ? undefined : str(o, k, what);
}

function id(o, k, what) {
  const v = str(o, k, what);
  if (!ID.test(v)) fail(`${what}.${k} is not a valid id`);
  return v;
}

function optId(o, k, what) {
  return o[k] === undefined || o[k] === null ? undefined : id(o, k, what);
}

function uint(o, k, what) {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(`${what}.${k} is not a whole number`);
  return v;
}

function optUint(o, k, what) {
  return o[k] === undefined || o[k] === null ? undefined : uint(o, k, what);
}

function bool(o, k, what) {
  if (typeof o[k] !== 'boolean') fail(`${what}.${k} is not a boolean`);
  return o[k];
}

function arr(o, k, what) {
  if (!Array.isArray(o[k])) fail(`${what}.${k} is not an array`);
  return o[k];
}

function user(v, what) {
  obj(v, what);
  return { id: id(v, 'id', what), name: str(v, 'name', what) };
}

function users(o, k, what) {
  return arr(o, k, what).map((u, i) => user(u, `${what}.${k}[${i}]`));
}

function reason(o, k, what) {
  const r = str(o, k, what);
  return REASONS.includes(r) ? r : 'failed';
}

function optReason(o, k, what) {
  return o[k] === undefined || o[k] === null ? undefined : reason(o, k, what);
}

function callType(o, k, what) {
  const t = str(o, k, what);
  if (t !== 'voice' && t !== 'video') fail(`${what}.${k} is neither voice nor video`);
  return t;
}

function result(v, what) {
  obj(v, what);
  switch (str(v, 'type', what)) {
    case 'invited':
      return {
        type: 'invited',
        call_id: id(v, 'call_id', what),
        ring_remaining_ms: uint(v, 'ring_remaining_ms', what),
        callees: arr(v, 'callees', what).map((c, i) => {
          const w = `${what}.callees[${i}]`;
          obj(c, w);
          const status = str(c, 'status', w);
          if (!STATUSES.includes(status)) fail(`${w}.status is unknown`);
          return { user: id(c, 'user', w), status };
        }),
      };
    case 'joined':
      return { type: 'joined', call_id: id(v, 'call_id', what), caller: user(v.caller, `${what}.caller`) };
    case 'done':
      return { type: 'done' };
    default:
      return fail(`${what}.type is not a known result`);
  }
}

const EVENT_TYPES = ['incoming_call', 'incoming_ended', 'outgoing_call', 'callee_ringing',
  'callee_delivered', 'callee_outcome', 'call_ended', 'participant_joined', 'participant_left'];

function event(v, what) {
  obj(v, what);
  const type = str(v, 'type', what);
  if (!EVENT_TYPES.includes(type)) return null; // unknown: skipped, its seq counts
  const call_id = id(v, 'call_id', what);
  switch (type) {
    case 'incoming_call':
      return {
        type, call_id, caller: user(v.caller, `${what}.caller`), call_type: callType(v, 'call_type', what),
        callees: users(v, 'callees', what), custom_data: optStr(v, 'custom_data', what),
        ring_remaining_ms: uint(v, 'ring_remaining_ms', what), ring_timeout_ms: uint(v, 'ring_timeout_ms', what),
      };
    case 'incoming_ended':
      return { type, call_id, reason: reason(v, 'reason', what), device: optId(v, 'device', what), custom_data: optStr(v, 'custom_data', what) };
    case 'outgoing_call':
      return {
        type, call_id, device: id(v, 'device', what), call_type: callType(v, 'call_type', what),
        callees: users(v, 'callees', what), custom_data: optStr(v, 'custom_data', what),
        ring_remaining_ms: uint(v, 'ring_remaining_ms', what),
      };
    case 'callee_ringing':
      return { type, call_id, callee: id(v, 'callee', what) };
    case 'callee_delivered':
      return { type, call_id, callee: id(v, 'callee', what), device: id(v, 'device', what) };
    case 'callee_outcome':
      return { type, call_id, callee: id(v, 'callee', what), reason: reason(v, 'reason', what), custom_data: optStr(v, 'custom_data', what) };
    case 'call_ended':
      return { type, call_id, reason: reason(v, 'reason', what), custom_data: optStr(v, 'custom_data', what) };
    case 'participant_joined':
      return { type, call_id, user: id(v, 'user', what), device: id(v, 'device', what) };
    case 'participant_left': {
      const r = str(v, 'reason', what);
      return { type, call_id, user: id(v, 'user', what), reason: LEAVE_REASONS.includes(r) ? r : 'left' };
    }
    default:
      return null; // unknown: skipped, its seq counts
  }
}

function outcome(v, what) {
  obj(v, what);
  return { callee: id(v, 'callee', what), reason: reason(v, 'reason', what), custom_data: optStr(v, 'custom_data', what) };
}

function snapshot(v, what) {
  obj(v, what);
  const role = str(v, 'role', what);
  if (role !== 'caller' && role !== 'callee') fail(`${what}.role is unknown`);
  const state = str(v, 'state', what);
  if (state !== 'ringing' && state !== 'accepted') fail(`${what}.state is unknown`);
  return {
    call_id: id(v, 'call_id', what), role, caller: user(v.caller, `${what}.caller`),
    caller_device: id(v, 'caller_device', what), call_type: callType(v, 'call_type', what),
    callees: users(v, 'callees', what), custom_data: optStr(v, 'custom_data', what), state,
    ring_remaining_ms: uint(v, 'ring_remaining_ms', what), ring_timeout_ms: uint(v, 'ring_timeout_ms', what),
    device: optId(v, 'device', what),
    outcomes: v.outcomes == null ? [] : arr(v, 'outcomes', what).map((o, i) => outcome(o, `${what}.outcomes[${i}]`)),
    delivered: v.delivered == null ? [] : arr(v, 'delivered', what).map((d, i) => {
      const w = `${what}.delivered[${i}]`;
      obj(d, w);
      return { callee: id(d, 'callee', w), device: id(d, 'device', w) };
    }),
  };
}

/**
 * Decodes one server message (a JSON text). Returns a plain object with the
 * same field names as the wire, or `{type: 'unknown', ty}` for a message
 * type this version does not know; an event of an unknown type has
 * `event: null`. Throws ProtocolError for anything a v1 client refuses.
 */
export function decodeServerMessage(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new ProtocolError(`not JSON: ${e.message}`);
  }
  obj(m, 'message');
  if (m.v !== PROTOCOL_VERSION) fail(`unsupported version ${JSON.stringify(m.v)}`);
  const type = str(m, 'type', 'message');
  const w = type;
  switch (type) {
    case 'welcome':
      return { v: 1, type, re: optId(m, 're', w), user: user(m.user, 'welcome.user'), device: id(m, 'device', w), seq: uint(m, 'seq', w), resumed: bool(m, 'resumed', w) };
    case 'reply':
      return { v: 1, type, re: id(m, 're', w), result: result(m.result, 'reply.result') };
    case 'error':
      return {
        v: 1, type, re: optId(m, 're', w), code: str(m, 'code', w), message: str(m, 'message', w),
        reason: optReason(m, 'reason', w), retry_after_ms: optUint(m, 'retry_after_ms', w),
      };
    case 'event':
      return {
        v: 1, type, seq: uint(m, 'seq', w), re: optId(m, 're', w),
        result: m.result == null ? undefined : result(m.result, 'event.result'),
        event: event(m.event, 'event.event'),
      };
    case 'sync':
      return {
        v: 1, type, re: optId(m, 're', w), seq: uint(m, 'seq', w),
        calls: arr(m, 'calls', w).map((c, i) => snapshot(c, `sync.calls[${i}]`)),
        ended: arr(m, 'ended', w).map((e, i) => {
          const x = `sync.ended[${i}]`;
          obj(e, x);
          return {
            call_id: id(e, 'call_id', x), reason: reason(e, 'reason', x), custom_data: optStr(e, 'custom_data', x),
            outcomes: e.outcomes == null ? [] : arr(e, 'outcomes', x).map((o, j) => outcome(o, `${x}.outcomes[${j}]`)),
          };
        }),
      };
    case 'pong':
      return { v: 1, type, re: optId(m, 're', w), seq: optUint(m, 'seq', w) };
    case 'closing': {
      const r = str(m, 'reason', w);
      return { v: 1, type, reason: CLOSE_REASONS.includes(r) ? r : 'shutting_down' };
    }
    default:
      return { v: 1, type: 'unknown', ty: type };
  }
}

/** Encodes a client message: `{v: 1, id, ...body}` without empty fields. */
export function encodeClientMessage(id, body) {
  const out = { v: PROTOCOL_VERSION, id };
  for (const [k, v] of Object.entries(body)) {
    if (v !== undefined && v !== null) out[k] = v;
  }
  return JSON.stringify(out);
}
