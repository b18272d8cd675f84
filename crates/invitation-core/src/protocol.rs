//! Wire protocol v1: every client command and server message as serde types,
//! JSON on the wire. See docs/protocol.md for the prose and one example of
//! each message.
//!
//! Rules:
//! * every message carries `"v": 1`; a peer refuses other versions with
//!   `unsupported_version`;
//! * client commands carry a request id `id`; retrying with the same id is
//!   idempotent;
//! * server events carry a per-user sequence number `seq`;
//! * ring time travels as time *remaining* in milliseconds, never as a wall
//!   clock instant, so device clock skew cannot matter;
//! * unknown fields are ignored (additive changes stay v1) in both
//!   directions;
//! * the server refuses an unknown *client* message type (`unknown_type`);
//!   a client skips an unknown *server* message type
//!   ([`ServerBody::Unknown`]) and an unknown event type
//!   ([`ServerBody::UnknownEvent`], whose `seq` still counts), so a newer
//!   server's additions never break an older client;
//! * duplicate keys, oversize input and over-deep nesting are refused with
//!   typed errors ([`ProtocolError`]) in both directions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{CommandError, ErrorCode, ProtocolError, ValidationError};
use crate::guard::{self, DecodeLimits};
use crate::id::{CallId, DeviceId, RequestId, UserId};
use crate::model::{CallType, CustomData, Reason, User};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

const CONTROL_TYPES: &[&str] = &["hello", "renew", "ping", "sync"];
const CLIENT_TYPES: &[&str] = &[
    "hello",
    "renew",
    "ping",
    "sync",
    "invite",
    "cancel",
    "accept",
    "decline",
    "hang_up",
    "received",
    "add",
    "join",
    "end",
    "register_push",
    "unregister_push",
    "app_state",
];
const SERVER_TYPES: &[&str] = &[
    "welcome", "reply", "error", "event", "sync", "pong", "closing",
];
/// The `event.type` values of this version: an event naming another one is
/// a newer server's addition, decoded as [`ServerBody::UnknownEvent`].
const EVENT_TYPES: &[&str] = &[
    "incoming_call",
    "incoming_ended",
    "outgoing_call",
    "callee_ringing",
    "callee_outcome",
    "call_ended",
    "callee_delivered",
    "participant_joined",
    "participant_left",
];
/// How much of an unknown type name is kept.
const MAX_TYPE_NAME: usize = 64;

/// A message from a client: its request id and its body, a connection-level
/// [`Control`] message or a call [`Command`].
///
/// Every client message gets exactly one answer carrying its id as `re`:
/// `welcome` (or an `error`) for `hello`, `pong` for `ping`, `sync` for
/// `sync`, and for a call command an `error`, or the first event the
/// command caused on this connection carrying `re` (see
/// [`ServerBody::Event`]), or a `reply` when it caused no event here (and
/// for a retried command, which changes nothing). One exception: a
/// `received` receipt ([`Command::Received`]) is never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMessage {
    /// Protocol version: always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Request id: echoed as `re` in the answer; reused on retry.
    pub id: RequestId,
    /// The message itself (its `type` and fields sit at the top level).
    #[serde(flatten)]
    pub body: ClientBody,
}

impl ClientMessage {
    /// A v1 message.
    pub fn new(id: RequestId, body: impl Into<ClientBody>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id,
            body: body.into(),
        }
    }

    /// Decodes untrusted input: size and structure caps first, then the
    /// typed decode of the control message or call command its `type` names.
    pub fn decode(input: &str, limits: &DecodeLimits) -> Result<Self, ProtocolError> {
        let head = check_head(input, limits, CLIENT_TYPES)?;
        let request = head.id.as_deref().and_then(|s| RequestId::new(s).ok());
        let invalid = |e: serde_json::Error| ProtocolError::Invalid {
            detail: e.to_string(),
            request: request.clone(),
        };
        let is_control = head
            .ty
            .as_deref()
            .is_some_and(|t| CONTROL_TYPES.contains(&t));
        if is_control {
            let w: Wire<Control> = serde_json::from_str(input).map_err(invalid)?;
            Ok(Self::new(w.id, w.body))
        } else {
            let w: Wire<Command> = serde_json::from_str(input).map_err(invalid)?;
            Ok(Self::new(w.id, w.body))
        }
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }

    /// The call command, when this is one.
    pub fn command(&self) -> Option<&Command> {
        match &self.body {
            ClientBody::Command(c) => Some(c),
            ClientBody::Control(_) => None,
        }
    }
}

/// One typed body of a client message, for the decoder.
#[derive(Deserialize)]
struct Wire<T> {
    #[allow(dead_code)] // checked by the guard pass
    v: u32,
    id: RequestId,
    #[serde(flatten)]
    body: T,
}

/// What a client message carries: a connection-level message, handled by
/// the connection machine ([`crate::connection`]), or a call command,
/// handled by the switchboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientBody {
    /// `hello`, `renew`, `ping`, `sync`.
    Control(Control),
    /// `invite`, `cancel`, `accept`, `decline`, `hang_up`, `add`, `join`,
    /// `end`.
    Command(Command),
}

impl From<Control> for ClientBody {
    fn from(c: Control) -> Self {
        ClientBody::Control(c)
    }
}

impl From<Command> for ClientBody {
    fn from(c: Command) -> Self {
        ClientBody::Command(c)
    }
}

/// Connection-level messages: the connection's life, not any call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// First message on a connection: who (from the token), which device,
    /// and where to resume the event stream. Answered by `welcome`.
    Hello {
        /// This device's id.
        device: DeviceId,
        /// The bearer token (required by the server; the memory hub ignores it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The last event sequence number this device processed; absent on a
        /// fresh start. The server replays what follows, or sends `sync`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// Replace the connection's token before it expires. Answered by `reply`.
    Renew {
        /// The new token.
        token: String,
    },
    /// Liveness probe; answered with `pong`.
    Ping,
    /// Ask for a full snapshot of this user's calls; answered with `sync`.
    Sync,
}

/// Call commands: what the switchboard handles.
///
/// Every action takes optional `custom_data` (opaque to the server, the same
/// size limit as an invite's; empty counts as none), delivered with the
/// events the action causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Invite one or more callees.
    Invite(InviteRequest),
    /// Caller: stop ringing everyone who has not answered.
    Cancel {
        /// The call.
        call_id: CallId,
        /// Delivered to every callee whose ring this cancel stops.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// Callee: accept on this device.
    Accept {
        /// The call.
        call_id: CallId,
        /// Delivered to the caller (and to your other devices).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// Callee: decline for the user (all devices stop ringing).
    Decline {
        /// The call.
        call_id: CallId,
        /// Decline as busy: the caller sees "busy", not "declined".
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        busy: bool,
        /// Delivered to the caller (and to your other devices).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// Leave the call (anyone in it, the caller included): the others go
    /// on while at least two remain; otherwise the call ends. The caller
    /// hanging up before anyone answered cancels the invitation.
    HangUp {
        /// The call.
        call_id: CallId,
        /// Delivered with the `call_ended` events this hang-up causes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// A participant of an accepted call rings more users into it. Answered
    /// with `invited` (the per-callee status of the added users only).
    Add {
        /// The call.
        call_id: CallId,
        /// Who to add: the callee limit counts everyone ever invited to
        /// the call; duplicates are removed.
        callees: Vec<UserId>,
    },
    /// An invitee whose ring ended (timeout, declined, canceled, missed
    /// while offline) or who left enters the call while it still goes on,
    /// on this device. On a call still ringing for you it is an accept.
    Join {
        /// The call.
        call_id: CallId,
    },
    /// End the call for everyone in it (who may: the server's end policy,
    /// by default the caller only).
    End {
        /// The call.
        call_id: CallId,
    },
    /// Callee device: receipt for an `incoming_call` this device received
    /// while it rings. Never answered (the one exception to "one answer per
    /// message"), idempotent; a receipt for a call this device is not
    /// ringing in changes nothing. The caller learns `callee_delivered`.
    Received {
        /// The call.
        call_id: CallId,
    },
    /// This device's push credentials: while none of the user's devices is
    /// connected in the foreground, an invitation to the user is pushed to
    /// every registered device (and a "stop ringing" push follows when the
    /// ring ends). Replaces this device's earlier registration; the server
    /// keeps a bounded number per user (the oldest goes). Answered `done`.
    RegisterPush(PushRegistration),
    /// Forget this device's push credentials. Answered `done`.
    UnregisterPush,
    /// The app went to the background (`true`) or came back (`false`). A
    /// backgrounded device still gets its events, and is also woken by push
    /// (its socket may be frozen by the OS). Every connection starts in the
    /// foreground. Answered `done`.
    AppState {
        /// In the background.
        background: bool,
    },
}

/// Where a device's push notifications are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PushPlatform {
    /// Apple Push Notification service (the token is the device token).
    Apns,
    /// Firebase Cloud Messaging (the token is the registration token).
    Fcm,
    /// Web Push (the token is the subscription, as the browser gives it).
    WebPush,
}

impl PushPlatform {
    /// The wire name (`"apns"`, `"fcm"`, `"web_push"`).
    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Fcm => "fcm",
            PushPlatform::WebPush => "web_push",
        }
    }
}

/// A device's push credentials, opaque to the server: handed to the push
/// gateway as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PushRegistration {
    /// The push service.
    pub platform: PushPlatform,
    /// The token (or web push subscription) for that service: 1 to
    /// [`PushRegistration::MAX_TOKEN`] bytes, printable, no control characters.
    pub token: String,
}

impl PushRegistration {
    /// The longest token accepted (a web push subscription with its keys is
    /// well under 1 KiB; APNs and FCM tokens are shorter still).
    pub const MAX_TOKEN: usize = 4096;

    /// Credentials for `platform`, not yet validated.
    pub fn new(platform: PushPlatform, token: impl Into<String>) -> Self {
        Self {
            platform,
            token: token.into(),
        }
    }

    /// Checks the token's length and characters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.token.is_empty() {
            return Err(ValidationError::Empty {
                field: "push token",
            });
        }
        if self.token.len() > Self::MAX_TOKEN {
            return Err(ValidationError::TooLong {
                field: "push token",
                max: Self::MAX_TOKEN,
                len: self.token.len(),
            });
        }
        if let Some(c) = self.token.chars().find(|c| c.is_control()) {
            return Err(ValidationError::BadCharacter {
                field: "push token",
                byte: u8::try_from(u32::from(c)).unwrap_or(0xff),
            });
        }
        Ok(())
    }
}

impl Command {
    /// `cancel` without data.
    pub fn cancel(call_id: CallId) -> Self {
        Command::Cancel {
            call_id,
            custom_data: None,
        }
    }

    /// `accept` without data.
    pub fn accept(call_id: CallId) -> Self {
        Command::Accept {
            call_id,
            custom_data: None,
        }
    }

    /// `decline` (as busy when `busy`) without data.
    pub fn decline(call_id: CallId, busy: bool) -> Self {
        Command::Decline {
            call_id,
            busy,
            custom_data: None,
        }
    }

    /// `hang_up` without data.
    pub fn hang_up(call_id: CallId) -> Self {
        Command::HangUp {
            call_id,
            custom_data: None,
        }
    }

    /// The same command carrying `custom_data` (ignored by `invite`, which
    /// has its own field, and by `received`).
    pub fn with_custom_data(mut self, data: Option<CustomData>) -> Self {
        match &mut self {
            Command::Cancel { custom_data, .. }
            | Command::Accept { custom_data, .. }
            | Command::Decline { custom_data, .. }
            | Command::HangUp { custom_data, .. } => *custom_data = data,
            Command::Invite(_)
            | Command::Received { .. }
            | Command::Add { .. }
            | Command::Join { .. }
            | Command::End { .. }
            | Command::RegisterPush(_)
            | Command::UnregisterPush
            | Command::AppState { .. } => {}
        }
        self
    }

    /// The wire `type` of this command (`"invite"`, `"hang_up"` ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Invite(_) => "invite",
            Command::Cancel { .. } => "cancel",
            Command::Accept { .. } => "accept",
            Command::Decline { .. } => "decline",
            Command::HangUp { .. } => "hang_up",
            Command::Received { .. } => "received",
            Command::Add { .. } => "add",
            Command::Join { .. } => "join",
            Command::End { .. } => "end",
            Command::RegisterPush(_) => "register_push",
            Command::UnregisterPush => "unregister_push",
            Command::AppState { .. } => "app_state",
        }
    }

    /// The call this command names (an invite names none yet).
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            Command::Invite(_)
            | Command::RegisterPush(_)
            | Command::UnregisterPush
            | Command::AppState { .. } => None,
            Command::Cancel { call_id, .. }
            | Command::Accept { call_id, .. }
            | Command::Decline { call_id, .. }
            | Command::HangUp { call_id, .. }
            | Command::Received { call_id }
            | Command::Add { call_id, .. }
            | Command::Join { call_id }
            | Command::End { call_id } => Some(call_id),
        }
    }

    /// The action's custom data, if it carries any (an invite's included).
    pub fn custom_data(&self) -> Option<&CustomData> {
        match self {
            Command::Invite(req) => req.custom_data.as_ref(),
            Command::Cancel { custom_data, .. }
            | Command::Accept { custom_data, .. }
            | Command::Decline { custom_data, .. }
            | Command::HangUp { custom_data, .. } => custom_data.as_ref(),
            Command::Received { .. }
            | Command::Add { .. }
            | Command::Join { .. }
            | Command::End { .. }
            | Command::RegisterPush(_)
            | Command::UnregisterPush
            | Command::AppState { .. } => None,
        }
    }
}

/// The body of an `invite` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InviteRequest {
    /// Who to ring: 1 to the configured maximum (9 by default); duplicates
    /// are removed, the caller may not be among them.
    pub callees: Vec<UserId>,
    /// Voice or video.
    pub call_type: CallType,
    /// Opaque data delivered to every callee (8 KiB max by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
    /// Ring timeout in whole seconds, 1 to 600 (default 60). Out-of-range
    /// values are refused, not clamped; fractions and negatives do not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
}

impl InviteRequest {
    /// An invitation of `callees` to a `call_type` call, with the server's
    /// default ring timeout and no custom data.
    pub fn new(callees: Vec<UserId>, call_type: CallType) -> Self {
        Self {
            callees,
            call_type,
            custom_data: None,
            timeout_s: None,
        }
    }

    /// With this custom data.
    pub fn with_custom_data(mut self, custom_data: Option<CustomData>) -> Self {
        self.custom_data = custom_data;
        self
    }

    /// With this ring timeout, in whole seconds.
    pub fn with_timeout_s(mut self, timeout_s: Option<u32>) -> Self {
        self.timeout_s = timeout_s;
        self
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMessage {
    /// Protocol version: always [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The message (its `type` and fields sit at the top level).
    #[serde(flatten)]
    pub body: ServerBody,
}

impl ServerMessage {
    /// A v1 message.
    pub fn new(body: ServerBody) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            body,
        }
    }

    /// Decodes untrusted input with the same caps as client messages.
    ///
    /// Additive evolution of v1: a message `type` this version does not know
    /// decodes as [`ServerBody::Unknown`], and an `event` whose `event.type`
    /// it does not know as [`ServerBody::UnknownEvent`] (with its `seq`), for
    /// the client to skip. Another `v`, a known type with missing or
    /// mistyped fields, and everything the guard refuses are still errors.
    pub fn decode(input: &str, limits: &DecodeLimits) -> Result<Self, ProtocolError> {
        match decode_checked(input, limits, SERVER_TYPES) {
            Ok(message) => Ok(message),
            Err(ProtocolError::UnknownType { ty, .. }) => Ok(Self::new(ServerBody::Unknown { ty })),
            Err(e @ ProtocolError::Invalid { .. }) => unknown_event(input).ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// Encodes as JSON. A skipped message ([`ServerBody::Unknown`],
    /// [`ServerBody::UnknownEvent`]) encodes as its type (and `seq`) alone.
    pub fn encode(&self) -> String {
        match &self.body {
            ServerBody::Unknown { ty } => serde_json::json!({"v": self.v, "type": ty}).to_string(),
            ServerBody::UnknownEvent { seq, re, ty } => {
                let mut m = serde_json::json!({
                    "v": self.v, "type": "event", "seq": seq, "event": {"type": ty}
                });
                if let Some(re) = re {
                    m["re"] = serde_json::json!(re);
                }
                m.to_string()
            }
            _ => serde_json::to_string(self).expect("server messages always serialize"),
        }
    }
}

/// Server messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerBody {
    /// Answer to `hello`: the session is open.
    Welcome {
        /// The `hello` answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<RequestId>,
        /// Who the server says you are.
        user: User,
        /// Your device.
        device: DeviceId,
        /// The sequence number of the newest event for this user right now.
        seq: u64,
        /// True when the requested `last_seq` could be honoured: missed
        /// events follow as `event` messages. False: a `sync` follows.
        resumed: bool,
    },
    /// Success answer to a command.
    Reply {
        /// The request id answered.
        re: RequestId,
        /// What happened.
        result: ReplyResult,
    },
    /// Failure answer to a command, or a connection-level error (`re` absent).
    Error(ErrorBody),
    /// One event of the user's sequenced stream. On the connection whose
    /// command caused it, the first such event also answers that command:
    /// it then carries the command's id as `re` (and, when the answer has
    /// data, as for `invite`, its `result`), and no separate `reply` is sent.
    Event {
        /// Per-user sequence number, contiguous from 1.
        seq: u64,
        /// The command this event answers, on the commanding connection only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<RequestId>,
        /// The answer's data when it has any (absent with `re`: `done`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<ReplyResult>,
        /// The event.
        event: Event,
    },
    /// Full snapshot of the user's calls; events continue after `seq`.
    Sync(SyncBody),
    /// Answer to `ping`, with the user's newest sequence number so that a
    /// client notices events lost at the tail of its stream.
    Pong {
        /// The `ping` answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        re: Option<RequestId>,
        /// The newest sequence number of the user (absent from servers that
        /// do not know it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// The server is about to close this connection.
    Closing {
        /// Why.
        reason: CloseReason,
    },
    /// Decoded only: a message type this version does not know (a newer
    /// server's addition within v1). A client skips it; it is not part of
    /// the event stream. Never sent.
    #[serde(skip)]
    Unknown {
        /// The `type` received (at most 64 characters kept).
        ty: String,
    },
    /// Decoded only: an `event` whose `event.type` this version does not
    /// know. A client skips the event but counts its `seq` as processed, so
    /// its position in the stream moves on (no gap, no resync). Never sent.
    #[serde(skip)]
    UnknownEvent {
        /// The event's sequence number.
        seq: u64,
        /// The command it answers, if it carries one: the answer still
        /// counts (as `done`), so the command does not wait for a reply
        /// that never comes.
        re: Option<RequestId>,
        /// The `event.type` received (at most 64 characters kept).
        ty: String,
    },
}

impl ServerBody {
    /// An event that answers no command.
    pub fn event(seq: u64, event: Event) -> Self {
        ServerBody::Event {
            seq,
            re: None,
            result: None,
            event,
        }
    }

    /// The command this message answers successfully, with the answer:
    /// a `reply`, or an `event` that carries the answer (`re`, and `result`
    /// unless it is `done`).
    pub fn success(&self) -> Option<(&RequestId, ReplyResult)> {
        match self {
            ServerBody::Reply { re, result } => Some((re, result.clone())),
            ServerBody::Event {
                re: Some(re),
                result,
                ..
            } => Some((re, result.clone().unwrap_or(ReplyResult::Done))),
            ServerBody::UnknownEvent { re: Some(re), .. } => Some((re, ReplyResult::Done)),
            _ => None,
        }
    }

    /// The request id this message answers, if it answers one (success,
    /// error, `welcome`, `pong` or `sync`).
    pub fn answers(&self) -> Option<&RequestId> {
        match self {
            ServerBody::Reply { re, .. } => Some(re),
            ServerBody::Event { re, .. }
            | ServerBody::Welcome { re, .. }
            | ServerBody::Pong { re, .. } => re.as_ref(),
            ServerBody::Error(e) => e.re.as_ref(),
            ServerBody::Sync(s) => s.re.as_ref(),
            ServerBody::UnknownEvent { re, .. } => re.as_ref(),
            ServerBody::Closing { .. } | ServerBody::Unknown { .. } => None,
        }
    }
}

/// Why the server closes a connection. Decoding is lenient (additive v1
/// evolution): a name this version does not know becomes
/// [`CloseReason::ShuttingDown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CloseReason {
    /// The same device connected again; the newest connection wins.
    Replaced,
    /// The server is shutting down; reconnect elsewhere or later. A close
    /// reason this version does not know (a newer server's) decodes as this
    /// one: close, then reconnect.
    ShuttingDown,
    /// The token expired and was not renewed.
    TokenExpired,
    /// The client broke the protocol too often.
    ProtocolViolation,
    /// The client does not read its messages fast enough.
    TooSlow,
    /// The user already has the most devices online the server allows;
    /// this new one was refused (existing devices are untouched).
    TooManyDevices,
}

impl<'de> Deserialize<'de> for CloseReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = CloseReason;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a close reason")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<CloseReason, E> {
                Ok(match s {
                    "replaced" => CloseReason::Replaced,
                    "token_expired" => CloseReason::TokenExpired,
                    "protocol_violation" => CloseReason::ProtocolViolation,
                    "too_slow" => CloseReason::TooSlow,
                    "too_many_devices" => CloseReason::TooManyDevices,
                    _ => CloseReason::ShuttingDown,
                })
            }
        }
        d.deserialize_str(Name)
    }
}

/// The body of a successful reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplyResult {
    /// The invitation exists; per-callee initial status.
    Invited {
        /// The new call.
        call_id: CallId,
        /// Ring time granted, in milliseconds.
        ring_remaining_ms: u64,
        /// One entry per callee, in request order, without duplicates.
        callees: Vec<CalleeStatus>,
    },
    /// Glare: the callee was already inviting you, so instead of a second
    /// call your invite accepted theirs. One call, no rings.
    Joined {
        /// The callee's call, now accepted by you.
        call_id: CallId,
        /// The user who had invited you.
        caller: User,
    },
    /// The command took effect.
    Done,
}

/// A callee's state right after the invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CalleeStatus {
    /// The callee.
    pub user: UserId,
    /// What happened to them.
    pub status: InitialStatus,
}

impl CalleeStatus {
    /// `user`'s state right after the invite.
    pub fn new(user: UserId, status: InitialStatus) -> Self {
        Self { user, status }
    }
}

/// What happened to a callee at invite time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InitialStatus {
    /// At least one device is ringing.
    Ringing,
    /// No device online: held until a device connects or the ring times out.
    Offline,
    /// Rejected as busy by the server's policy.
    Busy,
    /// Offline and the offline policy rejects rather than holds.
    Unreachable,
    /// Added while that user's own invitation was ringing the adder: their
    /// invitation gave way and they are in the call at once (no ring).
    Joined,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// The request id, when the failed message had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<RequestId>,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail (not for matching).
    pub message: String,
    /// For `ended`: how the invitation ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// For `rate_limited`: wait this long before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error answering `re` (if readable) with this code and detail.
    pub fn new(re: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            re,
            code,
            message: message.into(),
            reason: None,
            retry_after_ms: None,
        }
    }

    /// With how the invitation ended (for `ended`).
    pub fn with_reason(mut self, reason: Option<Reason>) -> Self {
        self.reason = reason;
        self
    }

    /// With the wait before a retry (for `rate_limited`, `unavailable`).
    pub fn with_retry_after_ms(mut self, retry_after_ms: Option<u64>) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// The wire form of a switchboard refusal.
    pub fn from_command(re: Option<RequestId>, e: &CommandError) -> Self {
        Self {
            re,
            code: e.code(),
            message: e.to_string(),
            reason: match e {
                CommandError::Ended { reason } => Some(*reason),
                _ => None,
            },
            retry_after_ms: match e {
                CommandError::RateLimited { retry_after_ms }
                | CommandError::Unavailable { retry_after_ms } => Some(*retry_after_ms),
                _ => None,
            },
        }
    }

    /// The wire form of a decode failure.
    pub fn from_protocol(e: &ProtocolError) -> Self {
        Self {
            re: e.request().cloned(),
            code: e.code(),
            message: e.to_string(),
            reason: None,
            retry_after_ms: None,
        }
    }

    /// Back to the typed refusal (client side). Codes with no variant of
    /// their own map to `None` (the caller wraps them in `Rejected`).
    pub fn to_command_error(&self) -> Option<CommandError> {
        Some(match self.code {
            ErrorCode::NotFound => CommandError::NotFound,
            ErrorCode::WrongRole => CommandError::WrongRole,
            ErrorCode::Ended => CommandError::Ended {
                reason: self.reason.unwrap_or(Reason::Failed),
            },
            ErrorCode::CallerBusy => CommandError::CallerBusy,
            ErrorCode::NotConnected => CommandError::NotConnected,
            ErrorCode::RateLimited => CommandError::RateLimited {
                retry_after_ms: self.retry_after_ms.unwrap_or(1000),
            },
            // Without a delay it is a shutdown, which has no typed variant.
            ErrorCode::Unavailable => CommandError::Unavailable {
                retry_after_ms: self.retry_after_ms?,
            },
            _ => return None,
        })
    }
}

/// Events of a user's sequenced stream. Every device of the user gets the
/// same stream; events naming a `device` let each device tell "me" from
/// "elsewhere".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// You are invited. Ring for `ring_remaining_ms` (measured when the
    /// server sent it); 0 means the invitation already ended for you (seen
    /// when replaying history): do not ring.
    IncomingCall {
        /// The call.
        call_id: CallId,
        /// Who calls (identity from their token).
        caller: User,
        /// Voice or video.
        call_type: CallType,
        /// Everyone invited, you included.
        callees: Arc<[User]>,
        /// The caller's data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
        /// Ring time left, in milliseconds.
        ring_remaining_ms: u64,
        /// The whole ring timeout the caller chose, in milliseconds.
        ring_timeout_ms: u64,
    },
    /// Ringing stopped for you (all your devices), with the reason. When a
    /// device of yours acted (accepted, declined) it is named: that device
    /// sees its own action, the others see "elsewhere".
    IncomingEnded {
        /// The call.
        call_id: CallId,
        /// How it ended for you.
        reason: Reason,
        /// Your device that accepted or declined, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        /// The data of the action that ended the ring: the caller's cancel,
        /// or the accept or decline of your device that acted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// One of your devices started this call (lets your other devices show it).
    OutgoingCall {
        /// The call.
        call_id: CallId,
        /// The device that invited.
        device: DeviceId,
        /// Voice or video.
        call_type: CallType,
        /// Everyone invited.
        callees: Arc<[User]>,
        /// Your data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
        /// Ring time left, in milliseconds.
        ring_remaining_ms: u64,
    },
    /// At least one device of this callee is online and was sent the
    /// invitation (server-side: says nothing about the app having it; see
    /// `callee_delivered`).
    CalleeRinging {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
    },
    /// A callee's final outcome: accepted, declined, busy, timeout,
    /// canceled, caller_gone or unreachable.
    CalleeOutcome {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The outcome.
        reason: Reason,
        /// The callee's data with its accept, decline or busy decline
        /// (none for outcomes the server decided: busy at invite time,
        /// timeout, canceled ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// The call is over for you: the invitation ended without an answer, or
    /// the accepted call was hung up.
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why (`hung_up` after an accepted call; otherwise the outcome).
        reason: Reason,
        /// The data of the hang-up or cancel that ended it for you.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_data: Option<CustomData>,
    },
    /// Receipt from the callee's device itself: `device` of `callee` has the
    /// invitation (it sent `received`). At most once per call, callee and
    /// device; `callee_ringing` without it means the server sent it but the
    /// app never confirmed (frozen, or still starting).
    CalleeDelivered {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The callee's device that has it.
        device: DeviceId,
    },
    /// Someone entered a call you are in (accepted, joined late, or was
    /// added through glare). Also sent to the joiner's own devices when
    /// they joined late: the device named is in the call, the others see
    /// "joined elsewhere". The caller learns of an accept from
    /// `callee_outcome` instead, as in a one-to-one call.
    ParticipantJoined {
        /// The call.
        call_id: CallId,
        /// Who joined.
        user: UserId,
        /// The device they are in the call on.
        device: DeviceId,
    },
    /// Someone left a call you are still in: the call goes on (at least
    /// two remain), or, with reason `ended_call`, they ended it for
    /// everyone and a `call_ended` follows.
    ParticipantLeft {
        /// The call.
        call_id: CallId,
        /// Who left.
        user: UserId,
        /// How.
        reason: LeaveReason,
    },
}

/// Why a participant left a call (see [`Event::ParticipantLeft`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaveReason {
    /// They hung up; the others go on.
    Left,
    /// They ended the call for everyone (`end`).
    EndedCall,
}

/// Someone in a call, and the device they are in it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Participant {
    /// Who.
    pub user: UserId,
    /// On which device.
    pub device: DeviceId,
}

impl Participant {
    /// `user`, in the call on `device`.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Self { user, device }
    }
}

impl Event {
    /// The call this event is about.
    pub fn call_id(&self) -> &CallId {
        match self {
            Event::IncomingCall { call_id, .. }
            | Event::IncomingEnded { call_id, .. }
            | Event::OutgoingCall { call_id, .. }
            | Event::CalleeRinging { call_id, .. }
            | Event::CalleeOutcome { call_id, .. }
            | Event::CallEnded { call_id, .. }
            | Event::CalleeDelivered { call_id, .. } => call_id,
            Event::ParticipantJoined { call_id, .. } | Event::ParticipantLeft { call_id, .. } => {
                call_id
            }
        }
    }
}

/// A full snapshot of one user's calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SyncBody {
    /// The `sync` request answered; absent when the server sends the
    /// snapshot unasked (after a `welcome` that could not resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<RequestId>,
    /// Events continue after this sequence number.
    pub seq: u64,
    /// Every live call the user is part of.
    pub calls: Vec<CallSnapshot>,
    /// Calls that ended recently for this user (bounded), so a device that
    /// missed the ending learns the reason.
    pub ended: Vec<EndedCall>,
}

/// One live call seen from one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallSnapshot {
    /// The call.
    pub call_id: CallId,
    /// Your role in it.
    pub role: Role,
    /// The caller.
    pub caller: User,
    /// The device of the caller that invited.
    pub caller_device: DeviceId,
    /// Voice or video.
    pub call_type: CallType,
    /// Everyone invited.
    pub callees: Arc<[User]>,
    /// The caller's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
    /// Ringing (for a callee: you have not answered) or accepted.
    pub state: SnapshotState,
    /// Ring time left in milliseconds (0 once nobody rings).
    pub ring_remaining_ms: u64,
    /// The whole ring timeout the caller chose, in milliseconds.
    pub ring_timeout_ms: u64,
    /// For a callee that accepted: the device that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// For the caller: the outcome of every callee that has one. For a
    /// callee in an accepted call whose accept carried data: its own
    /// outcome with that data (so a device of the callee that missed the
    /// accept learns it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<CalleeOutcome>,
    /// Once someone accepted: everyone in the call now (the caller first
    /// while in it, then callees in invitation order), with their device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
    /// For the caller: the callee devices that confirmed receipt
    /// (`callee_delivered`) so far, in the order they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<Delivery>,
}

/// One callee device that confirmed receipt of an invitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// The callee.
    pub callee: UserId,
    /// Its device.
    pub device: DeviceId,
}

impl Delivery {
    /// `device` of `callee` has the invitation.
    pub fn new(callee: UserId, device: DeviceId) -> Self {
        Self { callee, device }
    }
}

/// Your role in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// You invited.
    Caller,
    /// You were invited.
    Callee,
}

/// A call's state in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Still ringing (callee: for you; caller: for at least one callee).
    Ringing,
    /// Accepted and not hung up (callee: by you; caller: by at least one).
    Accepted,
}

/// A callee and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CalleeOutcome {
    /// The callee.
    pub callee: UserId,
    /// The outcome.
    pub reason: Reason,
    /// The callee's data with its accept, decline or busy decline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
}

/// A call that ended for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EndedCall {
    /// The call.
    pub call_id: CallId,
    /// How it ended for the user.
    pub reason: Reason,
    /// For the caller (while the server still holds the call): every
    /// callee's outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<CalleeOutcome>,
    /// The data of the action that ended it for the user (the one the
    /// ending event carried: a cancel's, a hang-up's, the accept or decline
    /// of the user's device that acted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
}

impl SyncBody {
    /// A snapshot (answering `re`, if asked for) of the live `calls` and
    /// recently `ended` ones; events continue after `seq`.
    pub fn new(
        re: Option<RequestId>,
        seq: u64,
        calls: Vec<CallSnapshot>,
        ended: Vec<EndedCall>,
    ) -> Self {
        Self {
            re,
            seq,
            calls,
            ended,
        }
    }
}

impl CalleeOutcome {
    /// `callee`'s outcome.
    pub fn new(callee: UserId, reason: Reason) -> Self {
        Self {
            callee,
            reason,
            custom_data: None,
        }
    }

    /// With the callee's data.
    pub fn with_custom_data(mut self, custom_data: Option<CustomData>) -> Self {
        self.custom_data = custom_data;
        self
    }
}

impl EndedCall {
    /// A call that ended for the user with `reason` (and, for its caller,
    /// each callee's outcome).
    pub fn new(call_id: CallId, reason: Reason, outcomes: Vec<CalleeOutcome>) -> Self {
        Self {
            call_id,
            reason,
            outcomes,
            custom_data: None,
        }
    }

    /// With the data of the action that ended it.
    pub fn with_custom_data(mut self, custom_data: Option<CustomData>) -> Self {
        self.custom_data = custom_data;
        self
    }
}

/// An `event` message whose well-formed envelope names an event type this
/// version does not know.
fn unknown_event(input: &str) -> Option<ServerMessage> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        ty: String,
        seq: u64,
        #[serde(default)]
        re: Option<RequestId>,
        event: Head,
    }
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        ty: String,
    }
    let e: Envelope = serde_json::from_str(input).ok()?;
    (e.ty == "event" && !EVENT_TYPES.contains(&e.event.ty.as_str())).then(|| {
        ServerMessage::new(ServerBody::UnknownEvent {
            seq: e.seq,
            re: e.re,
            ty: e.event.ty.chars().take(MAX_TYPE_NAME).collect(),
        })
    })
}

fn decode_checked<T: serde::de::DeserializeOwned>(
    input: &str,
    limits: &DecodeLimits,
    known_types: &[&str],
) -> Result<T, ProtocolError> {
    let head = check_head(input, limits, known_types)?;
    let request = head.id.as_deref().and_then(|s| RequestId::new(s).ok());
    serde_json::from_str(input).map_err(|e| ProtocolError::Invalid {
        detail: e.to_string(),
        request,
    })
}

/// The guard pass plus the version and type checks every message gets.
fn check_head(
    input: &str,
    limits: &DecodeLimits,
    known_types: &[&str],
) -> Result<guard::Head, ProtocolError> {
    let head = guard::check(input, limits)?;
    match head.v {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        other => {
            return Err(ProtocolError::UnsupportedVersion {
                got: other.unwrap_or(0),
                supported: PROTOCOL_VERSION,
            });
        }
    }
    let request = head.id.as_deref().and_then(|s| RequestId::new(s).ok());
    if let Some(ty) = &head.ty {
        if !known_types.contains(&ty.as_str()) {
            return Err(ProtocolError::UnknownType {
                ty: ty.chars().take(MAX_TYPE_NAME).collect(),
                request,
            });
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every close reason decodes back as itself (the lenient decoder names
    /// each one; a new variant must be added there, or it would read as
    /// `shutting_down`).
    #[test]
    fn every_close_reason_round_trips() {
        let all = |r: CloseReason| match r {
            // Exhaustive on purpose: a new variant fails to compile here.
            CloseReason::Replaced
            | CloseReason::ShuttingDown
            | CloseReason::TokenExpired
            | CloseReason::ProtocolViolation
            | CloseReason::TooSlow
            | CloseReason::TooManyDevices => r,
        };
        for r in [
            CloseReason::Replaced,
            CloseReason::ShuttingDown,
            CloseReason::TokenExpired,
            CloseReason::ProtocolViolation,
            CloseReason::TooSlow,
            CloseReason::TooManyDevices,
        ] {
            let json = serde_json::to_string(&all(r)).unwrap();
            assert_eq!(serde_json::from_str::<CloseReason>(&json).unwrap(), r);
        }
    }

    /// Every error code's name is its wire form.
    #[test]
    fn error_code_names_are_their_wire_form() {
        let all = [
            ErrorCode::NotFound,
            ErrorCode::WrongRole,
            ErrorCode::Ended,
            ErrorCode::CallerBusy,
            ErrorCode::Invalid,
            ErrorCode::NotConnected,
            ErrorCode::RateLimited,
            ErrorCode::TooLarge,
            ErrorCode::Malformed,
            ErrorCode::OverLimits,
            ErrorCode::DuplicateKey,
            ErrorCode::UnsupportedVersion,
            ErrorCode::UnknownType,
            ErrorCode::Unauthorized,
            ErrorCode::Unavailable,
            ErrorCode::Forbidden,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    /// Every reason decodes back as itself.
    #[test]
    fn every_reason_round_trips() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
    }
}
