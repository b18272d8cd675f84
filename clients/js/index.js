// invitation: the JavaScript client of the invitation signaling server.
// Plain ES modules, no build step; runs in browsers and Node 18+.
export { init, InvitationClient, CALLBACKS } from './src/client.js';
export { Session, DEFAULT_SESSION_CONFIG } from './src/session.js';
export { decodeServerMessage, encodeClientMessage, isId, PROTOCOL_VERSION, REASONS } from './src/protocol.js';
export { InvitationError, CommandError, ConnectionError, ProtocolError, ValidationError } from './src/errors.js';
