//! A client session fed arbitrary server messages (well-formed, in any
//! order, duplicated, with any sequence numbers): it never panics, never
//! fires a callback twice for the same call, and never rings for a call it
//! saw end.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use invitation_core::protocol::{Command, Event, ReplyResult, ServerBody, ServerMessage, SyncBody};
use invitation_core::{AppEvent, CallId, CallType, ClientSession, DeviceId, Reason, SessionConfig, User, UserId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum In {
    Welcome { seq: u8, resumed: bool },
    Incoming { seq: u8, call: u8, remaining_s: u8 },
    Ended { seq: u8, call: u8, reason: u8, mine: Option<bool> },
    Outcome { seq: u8, call: u8, reason: u8 },
    CallEnded { seq: u8, call: u8 },
    Sync { seq: u8 },
    Pong { seq: u8 },
    ReplyDone { req: u8 },
    Command { call: u8, kind: u8 },
    Disconnect,
    Connect,
    Tick { s: u8 },
    /// An event of a type this version does not know (a newer server's).
    UnknownEvent { seq: u8 },
    /// A message type this version does not know.
    UnknownMessage,
}

const REASONS: [Reason; 6] = [Reason::Accepted, Reason::Declined, Reason::Busy, Reason::Timeout, Reason::Canceled, Reason::CallerGone];

fuzz_target!(|input: Vec<In>| {
    let t0 = Instant::now();
    let mut now = t0;
    let me = DeviceId::new("phone").unwrap();
    let mut s = ClientSession::new(UserId::new("me").unwrap(), me.clone(), "f", SessionConfig::default());
    s.handle_connected(now, None);
    let cid = |c: u8| CallId::new(format!("c{}", c % 6)).unwrap();
    let caller = User::named("them", "Them");
    let mut seen: HashSet<String> = HashSet::new();
    let mut ended: HashSet<CallId> = HashSet::new();
    let mut requests: Vec<invitation_core::RequestId> = Vec::new();
    for step in input.into_iter().take(300) {
        let ev = |seq: u8, event: Event| ServerMessage::new(ServerBody::event(u64::from(seq), event));
        match step {
            In::Welcome { seq, resumed } => s.handle_message(now, ServerMessage::new(ServerBody::Welcome { re: None, user: User::named("me", "Me"), device: me.clone(), seq: u64::from(seq), resumed })),
            In::Incoming { seq, call, remaining_s } => s.handle_message(now, ev(seq, Event::IncomingCall {
                call_id: cid(call), caller: caller.clone(), call_type: CallType::Voice, callees: vec![User::named("me", "Me")].into(),
                custom_data: None, ring_remaining_ms: u64::from(remaining_s) * 1000, ring_timeout_ms: 60_000,
            })),
            In::Ended { seq, call, reason, mine } => s.handle_message(now, ev(seq, Event::IncomingEnded {
                call_id: cid(call), reason: REASONS[reason as usize % REASONS.len()],
                device: mine.map(|m| if m { me.clone() } else { DeviceId::new("other").unwrap() }),
                custom_data: None,
            })),
            In::Outcome { seq, call, reason } => s.handle_message(now, ev(seq, Event::CalleeOutcome {
                call_id: cid(call), callee: UserId::new("them").unwrap(), reason: REASONS[reason as usize % REASONS.len()],
                custom_data: None,
            })),
            In::CallEnded { seq, call } => s.handle_message(now, ev(seq, Event::CallEnded { call_id: cid(call), reason: Reason::HungUp, custom_data: None })),
            In::Sync { seq } => s.handle_message(now, ServerMessage::new(ServerBody::Sync(SyncBody::new(None, u64::from(seq), Vec::new(), Vec::new())))),
            In::UnknownEvent { seq } => s.handle_message(now, ServerMessage::new(ServerBody::UnknownEvent { seq: u64::from(seq), re: None, ty: "novel".into() })),
            In::UnknownMessage => s.handle_message(now, ServerMessage::new(ServerBody::Unknown { ty: "novel".into() })),
            In::Pong { seq } => s.handle_message(now, ServerMessage::new(ServerBody::Pong { re: None, seq: Some(u64::from(seq)) })),
            In::ReplyDone { req } => {
                if !requests.is_empty() {
                    let re = requests[req as usize % requests.len()].clone();
                    s.handle_message(now, ServerMessage::new(ServerBody::Reply { re, result: ReplyResult::Done }));
                }
            }
            In::Command { call, kind } => {
                let call_id = cid(call);
                let cmd = match kind % 4 {
                    0 => Command::accept(call_id),
                    1 => Command::decline(call_id, false),
                    2 => Command::cancel(call_id),
                    _ => Command::hang_up(call_id),
                };
                requests.push(s.command(now, cmd));
            }
            In::Disconnect => s.handle_disconnected(now),
            In::Connect => s.handle_connected(now, None),
            In::Tick { s: secs } => {
                now += Duration::from_secs(u64::from(secs));
                s.handle_timeout(now);
            }
        }
        while s.poll_transmit().is_some() {}
        while s.poll_completion().is_some() {}
        while let Some(e) = s.poll_event() {
            if matches!(e, AppEvent::Connection(_) | AppEvent::Resynced { .. } | AppEvent::CalleeRinging { .. }) {
                continue;
            }
            if let AppEvent::IncomingCallReceived { call_id, .. } = &e {
                assert!(!ended.contains(call_id), "rang for a call that had ended: {e:?}");
            }
            if let AppEvent::IncomingCallCanceled { call_id, .. } | AppEvent::IncomingCallTimeout { call_id, .. } = &e {
                ended.insert(call_id.clone());
            }
            assert!(seen.insert(format!("{e:?}")), "fired twice: {e:?}");
        }
    }
});
