//! The switchboard driven by arbitrary operation sequences, with the
//! invariants as assertions: no panic, an outcome never changes once
//! written, `poll_timeout()` is `None` exactly when nothing rings or waits
//! for a caller, and after every deadline passes nothing rings.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use invitation_core::protocol::{Command, InviteRequest};
use invitation_core::{
    CallId, CallType, ConnId, DeviceId, Reason, RequestId, SequentialCallIds, Switchboard,
    SwitchboardConfig, User, UserId,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect { user: u8, device: u8, last_seq: Option<u8> },
    Disconnect { conn: u8 },
    Invite { conn: u8, callees: Vec<u8>, timeout_s: u16, video: bool },
    Accept { conn: u8, call: u8 },
    Decline { conn: u8, call: u8, busy: bool },
    Cancel { conn: u8, call: u8 },
    HangUp { conn: u8, call: u8 },
    Sync { conn: u8 },
    Retry,
    Tick { ms: u16 },
}

fuzz_target!(|ops: Vec<Op>| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
    let mut conns: Vec<ConnId> = Vec::new();
    let mut calls: Vec<CallId> = Vec::new();
    let mut outcomes: HashMap<(CallId, UserId), Reason> = HashMap::new();
    let mut last: Option<(ConnId, RequestId, Command)> = None;
    let mut next_conn = 0u64;
    let mut n = 0u64;
    let user = |u: u8| UserId::new(format!("u{}", u % 5)).unwrap();
    for op in ops.into_iter().take(200) {
        let pick = |i: u8, v: &Vec<ConnId>| (!v.is_empty()).then(|| v[i as usize % v.len()]);
        let call = |i: u8, v: &Vec<CallId>| (!v.is_empty()).then(|| v[i as usize % v.len()].clone());
        n += 1;
        let id = RequestId::new(format!("r{n}")).unwrap();
        let send = |sb: &mut Switchboard, c: ConnId, cmd: Command, last: &mut Option<(ConnId, RequestId, Command)>| {
            *last = Some((c, id.clone(), cmd.clone()));
            sb.handle_command(now, c, id.clone(), cmd)
        };
        match op {
            Op::Connect { user: u, device, last_seq } => {
                let id = user(u);
                next_conn += 1;
                let c = ConnId::new(next_conn);
                sb.connect(now, c, User::new(id, "x").unwrap(), DeviceId::new(format!("d{}", device % 3)).unwrap(), last_seq.map(u64::from), None);
                conns.push(c);
            }
            Op::Disconnect { conn } => {
                if let Some(c) = pick(conn, &conns) {
                    sb.disconnect(now, c);
                }
            }
            Op::Invite { conn, callees, timeout_s, video } => {
                if let Some(c) = pick(conn, &conns) {
                    let req = InviteRequest::new(callees.iter().take(12).map(|u| user(*u)).collect(), if video { CallType::Video } else { CallType::Voice }).with_timeout_s(Some(u32::from(timeout_s % 700)));
                    if let Ok(invitation_core::protocol::ReplyResult::Invited { call_id, .. }) = send(&mut sb, c, Command::Invite(req), &mut last) {
                        calls.push(call_id);
                    }
                }
            }
            Op::Accept { conn, call: k } | Op::Cancel { conn, call: k } | Op::HangUp { conn, call: k } | Op::Decline { conn, call: k, .. } => {
                if let (Some(c), Some(call_id)) = (pick(conn, &conns), call(k, &calls)) {
                    let cmd = match op {
                        Op::Accept { .. } => Command::accept(call_id),
                        Op::Cancel { .. } => Command::cancel(call_id),
                        Op::HangUp { .. } => Command::hang_up(call_id),
                        Op::Decline { busy, .. } => Command::decline(call_id, busy),
                        _ => unreachable!(),
                    };
                    let _ = send(&mut sb, c, cmd, &mut last);
                }
            }
            Op::Sync { conn } => {
                if let Some(c) = pick(conn, &conns) {
                    sb.handle_sync(now, c, id.clone());
                }
            }
            Op::Retry => {
                if let Some((c, id, cmd)) = last.clone() {
                    let _ = sb.handle_command(now, c, id, cmd);
                }
            }
            Op::Tick { ms } => {
                now += Duration::from_millis(u64::from(ms) * 10);
                sb.handle_timeout(now);
            }
        }
        while sb.poll_output().is_some() {}
        for v in sb.calls() {
            for callee in v.callees() {
                if let Some(r) = v.outcome(&callee.id) {
                    let first = *outcomes.entry((v.call_id().clone(), callee.id.clone())).or_insert(r);
                    assert_eq!(first, r, "an outcome changed");
                }
            }
        }
        let live = sb.calls().any(|c| c.is_ringing() || c.caller_gone_at().is_some());
        assert_eq!(sb.poll_timeout().is_some(), live, "poll_timeout disagrees with the calls");
    }
    now += Duration::from_secs(700);
    sb.handle_timeout(now);
    assert!(sb.poll_timeout().is_none());
    assert!(sb.calls().all(|c| !c.is_ringing()));
});
