//! Calls that grow and shrink through the public client API on the memory
//! hub, with paused time: `invite_more`, `join`, `leave`, `end`; the ten
//! callbacks (recorded with the `Recorder`) and the participant events on
//! the stream, with their data and order.

use std::time::Duration;

use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation_core::protocol::{CalleeStatus, InitialStatus, LeaveReason};
use invitation_core::{CommandError, ErrorCode};
use tokio::sync::broadcast;

struct Dev {
    client: Client,
    rec: Recorder,
    events: broadcast::Receiver<AppEvent>,
}

async fn dev(hub: &MemoryHub, user: &str) -> Dev {
    let rec = Recorder::new();
    let u = User::named(user, &user.to_uppercase());
    let client = Client::builder()
        .user(u.clone())
        .device("phone")
        .transport(hub.transport(u))
        .handler(rec.clone())
        .build()
        .unwrap();
    let events = client.events();
    client.connect().await.unwrap();
    Dev {
        client,
        rec,
        events,
    }
}

/// The next participant event or call end on a device's stream (other
/// events skipped), within 5 s of (paused) time.
async fn next_change(d: &mut Dev) -> AppEvent {
    let wait = async {
        loop {
            let e = d.events.recv().await.expect("stream open");
            if matches!(
                e,
                AppEvent::ParticipantJoined { .. }
                    | AppEvent::ParticipantLeft { .. }
                    | AppEvent::CallEnded { .. }
            ) {
                return e;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("a participant event within 5 s")
}

fn joined(e: &AppEvent) -> Option<(CallId, String, String)> {
    match e {
        AppEvent::ParticipantJoined {
            call_id,
            user,
            device,
            ..
        } => Some((call_id.clone(), user.to_string(), device.to_string())),
        _ => None,
    }
}

fn left(e: &AppEvent) -> Option<(CallId, String, LeaveReason)> {
    match e {
        AppEvent::ParticipantLeft {
            call_id,
            user,
            reason,
            ..
        } => Some((call_id.clone(), user.to_string(), *reason)),
        _ => None,
    }
}

fn ended(e: &AppEvent) -> Option<(CallId, Reason)> {
    match e {
        AppEvent::CallEnded {
            call_id, reason, ..
        } => Some((call_id.clone(), *reason)),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_grows_and_shrinks_through_the_client_api() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice").await;
    let mut bob = dev(&hub, "bob").await;
    let mut carol = dev(&hub, "carol").await;

    let call = alice
        .client
        .invite(["bob"], CallType::Video, None)
        .await
        .unwrap()
        .call_id;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&call).await.unwrap();
    alice.rec.wait_for(Callback::OutgoingCallAccepted, 1).await;

    // bob rings carol into the call.
    let more = bob.client.invite_more(&call, ["carol"]).await.unwrap();
    assert_eq!(more.call_id, call);
    assert_eq!(
        more.callees,
        [CalleeStatus::new(
            UserId::new("carol").unwrap(),
            InitialStatus::Ringing
        )]
    );
    let rang = carol.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    match &rang.event {
        AppEvent::IncomingCallReceived {
            call_id,
            caller,
            callees,
            ..
        } => {
            assert_eq!(call_id, &call);
            assert_eq!(caller.id.as_str(), "alice");
            let ids: Vec<&str> = callees.iter().map(|u| u.id.as_str()).collect();
            assert_eq!(ids, ["bob", "carol"]);
        }
        other => panic!("{other:?}"),
    }

    // carol accepts: alice's outcome callback, bob's participant event.
    carol.client.accept(&call).await.unwrap();
    let accepted = alice.rec.wait_for(Callback::OutgoingCallAccepted, 2).await;
    assert!(
        matches!(&accepted.event, AppEvent::OutgoingCallAccepted { callee, .. } if callee.as_str() == "carol"),
        "{accepted:?}"
    );
    assert_eq!(
        joined(&next_change(&mut bob).await),
        Some((call.clone(), "carol".into(), "phone".into()))
    );

    // Only the caller may end it (the default policy).
    assert!(
        matches!(
            carol.client.end(&call).await,
            Err(ClientError::Command(CommandError::WrongRole))
        ),
        "carol is not the caller"
    );
    // Adding someone already in the call: the wire code, typed.
    assert!(matches!(
        bob.client.invite_more(&call, ["alice"]).await,
        Err(ClientError::Command(CommandError::Rejected {
            code: ErrorCode::AlreadyInCall,
            ..
        }))
    ));

    // alice leaves: bob and carol go on.
    alice.client.leave(&call).await.unwrap();
    for d in [&mut bob, &mut carol] {
        assert_eq!(
            left(&next_change(d).await),
            Some((call.clone(), "alice".into(), LeaveReason::Left))
        );
    }

    // bob leaves: carol is alone, the call ends for her.
    bob.client.leave(&call).await.unwrap();
    assert_eq!(
        ended(&next_change(&mut bob).await),
        Some((call.clone(), Reason::HungUp))
    );
    assert_eq!(
        ended(&next_change(&mut carol).await),
        Some((call.clone(), Reason::HungUp))
    );
    assert_eq!(
        carol.rec.callbacks(),
        [
            Callback::IncomingCallReceived,
            Callback::IncomingCallAcceptButtonPressed
        ]
    );
    assert_eq!(
        bob.rec.callbacks(),
        [
            Callback::IncomingCallReceived,
            Callback::IncomingCallAcceptButtonPressed
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_comes_in_and_the_caller_ends_the_call() {
    let hub = MemoryHub::new();
    let alice = dev(&hub, "alice").await;
    let mut bob = dev(&hub, "bob").await;
    let mut carol = dev(&hub, "carol").await;
    let call = alice
        .client
        .invite_with(
            invitation_core::protocol::InviteRequest::new(
                vec![UserId::new("bob").unwrap(), UserId::new("carol").unwrap()],
                CallType::Voice,
            )
            .with_timeout_s(Some(20)),
        )
        .await
        .unwrap()
        .call_id;
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    bob.client.accept(&call).await.unwrap();
    carol.rec.wait_for(Callback::IncomingCallTimeout, 1).await;

    carol.client.join(&call).await.unwrap();
    assert_eq!(
        joined(&next_change(&mut carol).await),
        Some((call.clone(), "carol".into(), "phone".into())),
        "the joining device hears its own join"
    );
    assert_eq!(
        joined(&next_change(&mut bob).await),
        Some((call.clone(), "carol".into(), "phone".into()))
    );

    alice.client.end(&call).await.unwrap();
    for d in [&mut bob, &mut carol] {
        assert_eq!(
            left(&next_change(d).await),
            Some((call.clone(), "alice".into(), LeaveReason::EndedCall))
        );
        assert_eq!(
            ended(&next_change(d).await),
            Some((call.clone(), Reason::HungUp))
        );
    }
    match carol.client.join(&call).await {
        Err(ClientError::Command(CommandError::Ended { reason })) => {
            assert_eq!(reason, Reason::HungUp)
        }
        other => panic!("{other:?}"),
    }
}
