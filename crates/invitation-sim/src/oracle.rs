//! The oracle: invariants 1-7 of reliability.md, checked on the complete
//! record of a run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use invitation::prelude::*;

use crate::world::{CallFacts, Incarnation, Record};

fn is_ring_end(e: &AppEvent, call: &CallId) -> bool {
    match e {
        AppEvent::IncomingCallCanceled { call_id, .. }
        | AppEvent::IncomingCallTimeout { call_id, .. }
        | AppEvent::IncomingCallAcceptButtonPressed { call_id, .. }
        | AppEvent::IncomingCallDeclineButtonPressed { call_id, .. }
        | AppEvent::OutgoingCallAccepted { call_id, .. } => call_id == call,
        _ => false,
    }
}

/// The callee outcome an outgoing event reports, if any.
fn outcome_of(e: &AppEvent) -> Option<(&CallId, &UserId, Reason)> {
    Some(match e {
        AppEvent::OutgoingCallAccepted {
            call_id, callee, ..
        } => (call_id, callee, Reason::Accepted),
        AppEvent::OutgoingCallDeclined {
            call_id, callee, ..
        } => (call_id, callee, Reason::Declined),
        AppEvent::OutgoingCallRejectedCauseBusy {
            call_id, callee, ..
        } => (call_id, callee, Reason::Busy),
        AppEvent::OutgoingCallTimeout {
            call_id, callee, ..
        } => (call_id, callee, Reason::Timeout),
        AppEvent::CalleeOutcome {
            call_id,
            callee,
            reason,
            ..
        } => (call_id, callee, *reason),
        _ => return None,
    })
}

/// Every broken invariant, as a sentence naming it.
pub fn check(r: &Record) -> Vec<String> {
    let mut v = Vec::new();
    for line in &r.trace {
        if line.starts_with("VIOLATION") {
            v.push(line.clone());
        }
    }
    let calls: HashMap<&CallId, &CallFacts> = r.calls.iter().map(|c| (&c.call_id, c)).collect();

    // 7 and 1 (switchboard side).
    if r.hub_timer_pending {
        v.push("inv7: the hub still has a timer after everything settled".into());
    }
    for c in &r.calls {
        if c.ringing {
            v.push(format!("inv7: {} still rings after settling", c.call_id));
        }
        for (callee, outcome, _) in &c.callees {
            if outcome.is_none() {
                v.push(format!("inv1: {} has no outcome for {callee}", c.call_id));
            }
        }
    }

    let mut accepted_by: HashMap<(CallId, UserId), Vec<String>> = HashMap::new();
    for (n, inc) in r.incarnations.iter().enumerate() {
        check_incarnation(n, inc, r, &calls, &mut accepted_by, &mut v);
    }
    // 2: one accepting device per callee, the one the hub recorded.
    for ((call, user), devices) in &accepted_by {
        if devices.len() > 1 {
            v.push(format!("inv2: {call}: {user} accepted on {devices:?}"));
        }
        if let Some(c) = calls.get(call) {
            let hub = c
                .callees
                .iter()
                .find(|(u, _, _)| u == user)
                .and_then(|(_, _, d)| d.clone());
            let dev = devices[0]
                .split('#')
                .next()
                .and_then(|s| s.split('/').nth(1))
                .map(str::to_owned);
            if hub.as_ref().map(|d| d.to_string()) != dev {
                v.push(format!(
                    "inv2: {call}: {user} accepted on {dev:?}, hub says {hub:?}"
                ));
            }
        }
    }
    v
}

fn check_incarnation(
    n: usize,
    inc: &Incarnation,
    r: &Record,
    calls: &HashMap<&CallId, &CallFacts>,
    accepted_by: &mut HashMap<(CallId, UserId), Vec<String>>,
    v: &mut Vec<String>,
) {
    let name = &inc.name;
    let resynced = inc
        .events
        .iter()
        .any(|(_, e)| matches!(e, AppEvent::Resynced { .. }));

    // 4: nothing twice (callbacks and stream).
    let mut seen = HashSet::new();
    for (_, e) in &inc.events {
        if matches!(
            e,
            AppEvent::Connection(_) | AppEvent::Resynced { .. } | AppEvent::CalleeRinging { .. }
        ) {
            continue;
        }
        if !seen.insert(format!("{e:?}")) {
            v.push(format!("inv4: {name} saw twice: {e:?}"));
        }
    }
    // The handler got exactly the callbacks of the stream, each once.
    let stream_callbacks: Vec<(Callback, String)> = inc
        .events
        .iter()
        .filter_map(|(_, e)| Callback::of(e).map(|c| (c, format!("{e:?}"))))
        .collect();
    let handler_callbacks: Vec<(Callback, String)> = inc
        .callbacks
        .iter()
        .map(|c| (c.callback, format!("{:?}", c.event)))
        .collect();
    if inc.alive && stream_callbacks.len() != handler_callbacks.len() {
        v.push(format!(
            "inv4: {name}: the stream had {} callback events, the handler ran {}",
            stream_callbacks.len(),
            handler_callbacks.len()
        ));
    }

    // 3 and 6 on the incoming side; 1 on the device side.
    let mut ended: HashSet<CallId> = HashSet::new();
    let mut rang: Vec<CallId> = Vec::new();
    for (at, e) in &inc.events {
        if let AppEvent::IncomingCallReceived {
            call_id,
            ring_remaining,
            ..
        } = e
        {
            if ended.contains(call_id) {
                v.push(format!("inv6: {name} rang for {call_id} after it ended"));
            }
            rang.push(call_id.clone());
            if let Some(c) = calls.get(call_id) {
                let floor = Duration::from_secs(5).min(c.ring_timeout / 2);
                if *ring_remaining < floor {
                    v.push(format!(
                        "inv3: {name} rang for {call_id} with {ring_remaining:?} left"
                    ));
                }
                if *at >= c.deadline + r.max_delay + Duration::from_millis(1) {
                    v.push(format!(
                        "inv3: {name} rang for {call_id} after its deadline"
                    ));
                }
            }
        }
        if let Some(c) = e.call_id() {
            if is_ring_end(e, c) {
                ended.insert(c.clone());
            }
        }
        if let AppEvent::IncomingCallAcceptButtonPressed { call_id, .. } = e {
            accepted_by
                .entry((call_id.clone(), inc.user.clone()))
                .or_default()
                .push(name.clone());
        }
    }
    for call in &rang {
        let ends = inc
            .events
            .iter()
            .filter(|(_, e)| is_ring_end(e, call))
            .count();
        if ends > 1 || (inc.alive && ends != 1) {
            v.push(format!(
                "inv1: {name}: the ring of {call} ended {ends} times"
            ));
        }
    }

    // 1 (caller side): the inviting incarnation learns each outcome once,
    // and it is the hub's.
    for c in r.calls.iter().filter(|c| c.inviter == n && !c.joined) {
        for (callee, outcome, _) in &c.callees {
            let seen: Vec<Reason> = inc
                .events
                .iter()
                .filter_map(|(_, e)| {
                    outcome_of(e)
                        .filter(|(id, u, _)| **id == c.call_id && *u == callee)
                        .map(|(_, _, r)| r)
                })
                .collect();
            if seen.len() > 1 {
                v.push(format!(
                    "inv1: {name}: outcome of {callee} in {} seen {} times",
                    c.call_id,
                    seen.len()
                ));
            }
            if inc.alive && !resynced && seen.is_empty() {
                v.push(format!(
                    "inv1: {name}: never learnt the outcome of {callee} in {}",
                    c.call_id
                ));
            }
            if let (Some(first), Some(hub)) = (seen.first(), outcome) {
                if first != hub && *first != Reason::Timeout {
                    v.push(format!(
                        "inv1: {name}: {callee} in {} reported {first}, hub says {hub}",
                        c.call_id
                    ));
                }
            }
        }
    }

    // 5: in step with the hub at the end.
    if inc.alive {
        let hub = r
            .hub_last_seq
            .iter()
            .find(|(u, _)| *u == inc.user)
            .map(|(_, s)| *s);
        if inc.last_seq != hub {
            v.push(format!(
                "inv5: {name} at seq {:?}, hub at {hub:?}",
                inc.last_seq
            ));
        }
    }
}
