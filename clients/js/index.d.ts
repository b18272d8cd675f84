// Type declarations for invitation-client (hand-written; the package is
// plain ES modules with no build step).

/** A user as the server shows it: the id and the display name from their token. */
export interface User {
  id: string;
  name: string;
}

export type CallType = 'voice' | 'video';

/** How an invitation, a callee's ring or a call ended (an unknown one reads as `failed`). */
export type Reason =
  | 'accepted' | 'declined' | 'busy' | 'timeout' | 'canceled' | 'caller_gone'
  | 'answered_elsewhere' | 'declined_elsewhere' | 'unreachable' | 'hung_up' | 'failed'
  | 'server_shutdown';

/** The protocol's error codes (docs/protocol.md), plus the client's own. */
export type ErrorCode =
  | 'not_found' | 'wrong_role' | 'ended' | 'caller_busy' | 'invalid' | 'not_connected'
  | 'rate_limited' | 'forbidden' | 'already_in_call' | 'too_large' | 'malformed' | 'over_limits'
  | 'duplicate_key' | 'unsupported_version' | 'unknown_type' | 'unauthorized' | 'unavailable'
  | 'timed_out' | 'queue_full' | 'closed' | 'replaced' | 'token_expired' | 'too_many_devices'
  | 'token_provider' | 'transport' | 'protocol'
  | (string & {});

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'stopped';

/** Every event of the complete stream (`onEvent`); the ten callbacks are fired from some of them. */
export type AppEvent =
  | { type: 'IncomingCallReceived'; callId: string; caller: User; callType: CallType; callees: User[]; customData?: string; ringRemainingMs: number; ringTimeoutMs: number }
  | { type: 'IncomingCallCanceled'; callId: string; caller: User; customData?: string; reason: Reason }
  | { type: 'IncomingCallTimeout'; callId: string; caller: User; reason: 'timeout' }
  | { type: 'IncomingCallAcceptButtonPressed'; callId: string; reason: 'accepted' }
  | { type: 'IncomingCallDeclineButtonPressed'; callId: string; busy: boolean; reason: 'declined' | 'busy' }
  | { type: 'OutgoingCallCancelButtonPressed'; callId: string; reason: 'canceled' }
  | { type: 'OutgoingCallAccepted'; callId: string; callee: string; customData?: string; reason: 'accepted' }
  | { type: 'OutgoingCallRejectedCauseBusy'; callId: string; callee: string; customData?: string; reason: 'busy' }
  | { type: 'OutgoingCallDeclined'; callId: string; callee: string; customData?: string; reason: 'declined' }
  | { type: 'OutgoingCallTimeout'; callId: string; callee: string; customData?: string; reason: 'timeout' }
  | { type: 'AnsweredElsewhere'; callId: string; device?: string; customData?: string }
  | { type: 'DeclinedElsewhere'; callId: string; device?: string; customData?: string }
  | { type: 'OutgoingCallStarted'; callId: string; device: string; callees: User[]; callType?: CallType }
  | { type: 'CalleeRinging'; callId: string; callee: string }
  | { type: 'CalleeDelivered'; callId: string; callee: string; device: string }
  | { type: 'CalleeOutcome'; callId: string; callee: string; reason: Reason; customData?: string }
  | { type: 'CallEnded'; callId: string; reason: Reason; customData?: string }
  | { type: 'ParticipantJoined'; callId: string; user: string; device: string }
  | { type: 'ParticipantLeft'; callId: string; user: string; reason: 'left' | 'ended_call' }
  | { type: 'Resynced'; liveCalls: number }
  | { type: 'Connection'; state: 'connected'; resumed: boolean; user: User }
  | { type: 'Connection'; state: 'reconnecting' };

/** The last argument of every callback: the rest of what is known about the event. */
export interface CallbackContext {
  /** The reason of an ending (`answered_elsewhere`, `caller_gone` ... for onIncomingCallCanceled). */
  reason?: Reason;
  /** The custom data of the action behind the event (docs/events.md). */
  customData?: string;
  /** The complete event. */
  event: AppEvent;
  /** The client, to act from inside the callback. */
  client: InvitationClient;
}

/** The ten callbacks, under the origin's names and argument order; every one optional. */
export interface Callbacks {
  /** Callee: an invitation rings on this device (also one delivered late, on (re)connect). */
  onIncomingCallReceived?(callID: string, caller: User, callType: CallType, callees: User[], customData: string | undefined, ctx: CallbackContext): void;
  /** Callee: the ring stopped before this device answered (`ctx.reason`: canceled, caller_gone, answered_elsewhere, declined_elsewhere). */
  onIncomingCallCanceled?(callID: string, caller: User, customData: string | undefined, ctx: CallbackContext): void;
  /** Callee: nobody on this user's devices answered in time. */
  onIncomingCallTimeout?(callID: string, caller: User, ctx: CallbackContext): void;
  /** Callee: this device accepted (the server confirmed it). */
  onIncomingCallAcceptButtonPressed?(callID: string, ctx: CallbackContext): void;
  /** Callee: this device declined (the server confirmed it; `ctx.reason` is `busy` for a busy decline). */
  onIncomingCallDeclineButtonPressed?(callID: string, ctx: CallbackContext): void;
  /** Caller: this device canceled (the server confirmed it). */
  onOutgoingCallCancelButtonPressed?(callID: string, ctx: CallbackContext): void;
  /** Caller (the inviting device): a callee accepted; their accept's data is `ctx.customData`. */
  onOutgoingCallAccepted?(callID: string, calleeID: string, ctx: CallbackContext): void;
  /** Caller: a callee was busy (server policy) or declined as busy (with their data). */
  onOutgoingCallRejectedCauseBusy?(callID: string, calleeID: string, customData: string | undefined, ctx: CallbackContext): void;
  /** Caller: a callee declined; their decline's data is `ctx.customData`. */
  onOutgoingCallDeclined?(callID: string, calleeID: string, ctx: CallbackContext): void;
  /** Caller: a callee did not answer in time (once per such callee); `customData` is your own invite's. */
  onOutgoingCallTimeout?(callID: string, calleeID: string, customData: string | undefined, ctx: CallbackContext): void;
}

/** Session timing and bounds (milliseconds); the defaults are the Rust client's. */
export interface SessionConfig {
  minRingLeftMs?: number;
  fallbackMarginMs?: number;
  reorderBuffer?: number;
  rememberedCalls?: number;
  commandRetryMs?: number;
  commandRetryMaxMs?: number;
  gapTimeoutMs?: number;
  syncRetryMs?: number;
  commandDeadlineMs?: number;
  sendReceipts?: boolean;
  /** Most commands waiting for an answer; past it an action rejects with `queue_full` (256). */
  maxPending?: number;
}

/** A WebSocket constructor (the browser's, Node 22's, or the `ws` package's). */
export type WebSocketConstructor = new (url: string) => {
  readyState: number;
  send(data: string): void;
  close(code?: number): void;
  onopen: ((ev?: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev?: { code?: number }) => void) | null;
  onerror: ((ev?: unknown) => void) | null;
};

export interface InitOptions extends Callbacks {
  /** `ws://host:7600/` or `wss://...`. */
  url: string;
  /** A token from your backend (HS256 JWT). Give this or `tokenProvider`. */
  token?: string;
  /** Returns a fresh token: used when none was given, to renew at 80 % of a token's life, after `token_expired`, and once after a refusal. */
  tokenProvider?: () => Promise<string> | string;
  /** This device's id (stable per installation; default: random per client). */
  device?: string;
  /** The WebSocket constructor; default `globalThis.WebSocket` (absent in Node 20: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Every event of the stream, after its callback (if any). */
  onEvent?(event: AppEvent): void;
  onConnectionStateChanged?(state: ConnectionState): void;
  /** The client stopped for good (unauthorized, replaced, too_many_devices, token_expired without provider, closed, ...). */
  onStopped?(error: ConnectionError): void;
  /** A callback threw, or the server sent something this client refuses. */
  onError?(error: unknown, where?: string): void;
  /** Silence after which the client sends a ping (20,000). */
  heartbeatMs?: number;
  /** Silence after which the link counts as dead and is replaced (45,000). */
  deadAfterMs?: number;
  /** First reconnect step (250); it doubles up to `backoffMaxMs` (30,000), each wait drawn between half and all of the step. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Prefix of this client's request ids (default random). */
  requestPrefix?: string;
  session?: SessionConfig;
}

export interface CalleeStatus {
  user: string;
  status: 'ringing' | 'offline' | 'busy' | 'unreachable' | 'joined';
}

export type InviteResult =
  | { type: 'invited'; callId: string; ringRemainingMs: number; callees: CalleeStatus[] }
  | { type: 'joined'; callId: string; caller: User };

export interface InviteOptions {
  callType?: CallType;
  customData?: string;
  /** Ring timeout, whole seconds 1..600 (default: the server's, 60). */
  timeoutS?: number;
}

export class InvitationClient {
  constructor(options: InitOptions);
  readonly device: string;
  readonly state: ConnectionState;
  /** This user, from the last welcome. */
  readonly user: User | null;
  /** Resolves on the first welcome; rejects with a ConnectionError if the client stops first. */
  connect(): Promise<void>;
  /** Stops for good; pending actions reject with code `closed`. */
  close(): void;
  invite(callees: string | string[], options?: InviteOptions): Promise<InviteResult>;
  accept(callId: string, customData?: string): Promise<{ type: 'done' }>;
  decline(callId: string, customData?: string): Promise<{ type: 'done' }>;
  declineBusy(callId: string, customData?: string): Promise<{ type: 'done' }>;
  cancel(callId: string, customData?: string): Promise<{ type: 'done' }>;
  hangUp(callId: string, customData?: string): Promise<{ type: 'done' }>;
  /** Rings more users into an accepted call you are in. */
  add(callId: string, callees: string | string[]): Promise<InviteResult | { type: 'done' }>;
  /** Enters a call you were invited to while it goes on. */
  join(callId: string): Promise<{ type: 'done' }>;
  /** Ends the call for everyone (the server's end policy decides who may). */
  end(callId: string): Promise<{ type: 'done' }>;
}

/** Creates a client and starts connecting. */
export function init(options: InitOptions): InvitationClient;

/** App event type -> [callback name, argument builder]. */
export const CALLBACKS: Readonly<Record<string, readonly [keyof Callbacks, (e: AppEvent) => unknown[]]>>;

export class InvitationError extends Error {
  constructor(code: ErrorCode, message: string);
  readonly code: ErrorCode;
}

/** The server refused a command; `code` is the protocol's error code. */
export class CommandError extends InvitationError {
  /** With `ended`: how the invitation ended for you. */
  readonly reason?: Reason;
  /** With `rate_limited` / `unavailable`. */
  readonly retryAfterMs?: number;
}

export class ConnectionError extends InvitationError {}
export class ProtocolError extends InvitationError {}
export class ValidationError extends InvitationError {}

/** The wire layer. */
export const PROTOCOL_VERSION: 1;
export const REASONS: readonly Reason[];
export function isId(s: unknown): boolean;
/** Decodes a server message as a v1 client does; throws ProtocolError when it refuses it. */
export function decodeServerMessage(text: string): { v: 1; type: string; [field: string]: unknown };
export function encodeClientMessage(id: string, body: Record<string, unknown>): string;

/** The sans-IO session (advanced: drive it yourself, e.g. on another transport). */
export class Session {
  constructor(options: { user: string; device: string; prefix?: string; config?: SessionConfig });
  readonly lastSeq: number | null;
  readonly duplicates: number;
  handleConnected(now: number, token?: string): void;
  handleDisconnected(now?: number): void;
  handleMessage(now: number, message: ReturnType<typeof decodeServerMessage>): void;
  handleTimeout(now: number): void;
  command(now: number, body: Record<string, unknown>): string;
  abandon(id: string): void;
  ping(): void;
  pollTransmit(): { id: string; body: Record<string, unknown> } | undefined;
  pollEvent(): AppEvent | undefined;
  pollCompletion(): [string, { ok: true; result: Record<string, unknown> } | { ok: false; error: { code: string; message: string; reason?: Reason; retry_after_ms?: number } }] | undefined;
  pollTimeout(): number | undefined;
  isRinging(callId: string): boolean;
}

export const DEFAULT_SESSION_CONFIG: Readonly<Required<SessionConfig>>;
