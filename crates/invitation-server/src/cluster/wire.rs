//! What nodes say to each other over NATS (JSON, like the client
//! protocol): edges to the switchboard's node ("up"), the switchboard's
//! node to an edge ("down"), the leader's heartbeat, the HTTP API's
//! requests and the log's records.

use invitation_core::durable::JournalEntry;
use invitation_core::protocol::{
    CloseReason, Command, ErrorBody, PushRegistration, ReplyResult, ServerMessage,
};
use invitation_core::{CallId, CommandError, DeviceId, RequestId, SwitchboardInput, User, UserId};
use serde::{Deserialize, Serialize};

/// An edge to the switchboard's node, on `inv.<deployment>.up`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Up {
    /// The leader term the edge believes in: the switchboard ignores
    /// messages of another term (their connections are being closed).
    pub term: u64,
    /// The edge (its name for this process's lifetime).
    pub node: String,
    /// What happened.
    pub body: UpBody,
}

/// What an edge reports.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum UpBody {
    /// A connection of the edge handed its machine's input over.
    Input {
        /// The edge's connection id.
        conn: u64,
        /// When the edge read it (unix ns; for load shedding).
        read_ns: i64,
        /// The input.
        input: SwitchboardInput,
    },
    /// The edge is alive (every [`super::node::ALIVE_EVERY`]).
    Alive,
}

/// The switchboard's node to one edge, on `inv.<deployment>.down.<node>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Down {
    /// Write this message to the connection.
    Send { conn: u64, message: ServerMessage },
    /// Close the connection (with this reason, if any).
    Close {
        conn: u64,
        reason: Option<CloseReason>,
    },
}

/// The leader's heartbeat, on `inv.<deployment>.leader`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Leader {
    /// The log sequence of the leader's term record: grows with every
    /// take-over, so an edge never goes back to an older leader.
    pub term: u64,
    /// The leader's node name.
    pub node: String,
}

/// One record of the switchboard log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Record {
    /// A node took the lead here.
    Term { node: String },
    /// One hub turn's journal entries.
    Turn { entries: Vec<JournalEntry> },
}

/// An HTTP API request an edge forwards to the switchboard's node, on
/// `inv.<deployment>.api` (NATS request/reply).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum ApiRequest {
    Backend {
        user: User,
        request: RequestId,
        command: Command,
    },
    Push {
        user: UserId,
        device: DeviceId,
        registration: Option<PushRegistration>,
    },
    PushDevices {
        user: UserId,
    },
    Presence {
        user: UserId,
    },
    Call {
        call_id: CallId,
    },
}

/// A command's answer, as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Answer {
    Ok { result: ReplyResult },
    Err { error: ErrorBody },
}

impl Answer {
    pub(crate) fn of(result: Result<ReplyResult, CommandError>) -> Self {
        match result {
            Ok(result) => Self::Ok { result },
            Err(e) => Self::Err {
                error: ErrorBody::from_command(None, &e),
            },
        }
    }

    pub(crate) fn into_result(self) -> Result<ReplyResult, CommandError> {
        match self {
            Self::Ok { result } => Ok(result),
            Self::Err { error } => {
                Err(error
                    .to_command_error()
                    .unwrap_or(CommandError::Unavailable {
                        retry_after_ms: 1000,
                    }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invitation_core::CallType;
    use invitation_core::protocol::InviteRequest;

    /// Every input the edges carry comes back as it went.
    #[test]
    fn inputs_round_trip() {
        let inputs = [
            SwitchboardInput::Connect {
                user: User::named("alice", "Alice"),
                device: DeviceId::new("phone").unwrap(),
                last_seq: Some(7),
                hello: RequestId::new("h1").unwrap(),
            },
            SwitchboardInput::Command {
                id: RequestId::new("r1").unwrap(),
                command: Command::Invite(InviteRequest::new(
                    vec![UserId::new("bob").unwrap()],
                    CallType::Video,
                )),
            },
            SwitchboardInput::Sync {
                id: RequestId::new("s").unwrap(),
            },
            SwitchboardInput::Disconnect,
            SwitchboardInput::Receipt {
                call_id: CallId::new("c-1").unwrap(),
            },
        ];
        for input in inputs {
            let up = Up {
                term: 3,
                node: "n1".into(),
                body: UpBody::Input {
                    conn: 9,
                    read_ns: 1,
                    input: input.clone(),
                },
            };
            let back: Up = serde_json::from_slice(&serde_json::to_vec(&up).unwrap()).unwrap();
            let UpBody::Input { input: got, .. } = back.body else {
                panic!("an input");
            };
            assert_eq!(got, input);
        }
    }

    /// A refusal keeps its kind across the wire.
    #[test]
    fn answers_keep_the_error() {
        let err = CommandError::Unavailable {
            retry_after_ms: 250,
        };
        let wire = serde_json::to_vec(&Answer::of(Err(err.clone()))).unwrap();
        let back: Answer = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back.into_result(), Err(err));
    }
}
