// Typed errors. Every error the client gives you is an InvitationError with
// a `code`: the protocol's error code when the server refused a command
// (`not_found`, `wrong_role`, `ended`, `caller_busy`, `invalid`,
// `rate_limited`, `unavailable`, `already_in_call`, `forbidden`, ...), or
// one of the client's own (`timed_out`, `unauthorized`, `replaced`,
// `token_expired`, `too_many_devices`, `queue_full`, `closed`,
// `token_provider`, `transport`, `protocol`).

/** Base class of every error this package throws or rejects with. */
export class InvitationError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'InvitationError';
    /** Machine-readable code. */
    this.code = code;
  }
}

/** The server refused a command (`code` is the protocol's error code). */
export class CommandError extends InvitationError {
  constructor(code, message, { reason, retryAfterMs } = {}) {
    super(code, message);
    this.name = 'CommandError';
    /** With `ended`: how the invitation ended for you (the winner of a race). */
    this.reason = reason;
    /** With `rate_limited` / `unavailable`: how long to wait. */
    this.retryAfterMs = retryAfterMs;
  }
}

/** The connection stopped for good (the client will not reconnect). */
export class ConnectionError extends InvitationError {
  constructor(code, message) {
    super(code, message);
    this.name = 'ConnectionError';
  }
}

/** A server message this v1 client refuses (missing or mistyped field, other version). */
export class ProtocolError extends InvitationError {
  constructor(message) {
    super('protocol', message);
    this.name = 'ProtocolError';
  }
}

/** Bad arguments to an action, refused before anything is sent. */
export class ValidationError extends InvitationError {
  constructor(message) {
    super('invalid', message);
    this.name = 'ValidationError';
  }
}
