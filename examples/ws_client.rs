//! A command-line client for a running `invitation-server`: wait for calls
//! (and answer them), or call someone. `--help` lists the options.
//!
//! ```text
//! cargo run --features websocket,http --example ws_client -- --token "$BOB" --answer accept
//! cargo run --features websocket,http --example ws_client -- --token "$ALICE" --call bob --cancel-after 10
//! cargo run --features websocket,http --example ws_client -- --url wss://calls.example.org/ --token "$BOB"
//! cargo run --features websocket,http --example ws_client -- --url wss://127.0.0.1:7600/ --ca ca.pem --token "$BOB"
//! cargo run --features websocket,http --example ws_client -- --url http://127.0.0.1:7600/ --token "$BOB"
//! ```
//!
//! The URL's scheme picks the transport: `ws://` / `wss://` a WebSocket,
//! `http://` / `https://` plain HTTP requests and long polls (where a
//! WebSocket cannot get through). TLS trusts the system's root
//! certificates, or only those of `--ca`.
//!
//! The user comes from the token (its claims are read, not verified: only
//! the server verifies). Every line is something that happened, in order,
//! with the time since start.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use invitation::core::protocol::InitialStatus;
use invitation::prelude::*;
use invitation::transport::endpoint::Endpoint;
use invitation::transport::tls::ClientTls;
use invitation::{ConnectionState, StopReason, UnverifiedClaims};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// Waits for calls and answers them, or calls someone, through an
/// invitation-server.
#[derive(Parser, Debug)]
#[command(
    name = "ws_client",
    after_help = "Mint a token with `invitation-server token --user bob --name Bob` \
                  (same INVITATION_SECRET as the server)."
)]
struct Args {
    /// The bearer token (a JWT minted for your user).
    #[arg(long, env = "INVITATION_TOKEN", hide_env_values = true)]
    token: String,
    /// The server: `ws://`, `wss://`, `http://` or `https://` host:port/.
    #[arg(long, default_value = "ws://127.0.0.1:7600/")]
    url: String,
    /// For `wss://` and `https://`: trust only the CA certificates in this PEM file (a
    /// private deployment) instead of the system's roots.
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// Your user id; optional, taken from the token. Given, it must match.
    #[arg(long)]
    user: Option<String>,
    /// This device's name [default: cli-<process id>, unique per process].
    /// Two clients with the same user and device replace each other: the
    /// older one stops.
    #[arg(long)]
    device: Option<String>,
    /// What to do with incoming calls.
    #[arg(long, value_enum, default_value_t = Answer::Ring)]
    answer: Answer,
    /// Call these users (comma-separated), wait for the outcome, hang up.
    #[arg(long, value_delimiter = ',', value_name = "USER[,USER...]")]
    call: Vec<String>,
    /// Voice or video.
    #[arg(long, value_enum, default_value_t = Kind::Video)]
    call_type: Kind,
    /// Ring timeout of the call, 1 to 600 s [default: the server's].
    #[arg(long, value_name = "SECS")]
    ring_timeout: Option<u64>,
    /// Cancel the call if nobody answered within this long (Enter cancels too).
    #[arg(long, value_name = "SECS")]
    cancel_after: Option<u64>,
    /// Once accepted, hang up after this long.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    hang_up_after: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Answer {
    /// Accept on this device.
    Accept,
    /// Decline (every device of yours stops ringing).
    Decline,
    /// Decline as busy: the caller sees "busy".
    Busy,
    /// Let it ring: the call times out, or is answered elsewhere.
    Ring,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Voice,
    Video,
}

/// Answers incoming calls; the lines are printed from the event stream.
struct Answerer(Answer);

#[async_trait]
impl InvitationEvents for Answerer {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        let result = match self.0 {
            Answer::Accept => ctx.accept().await,
            Answer::Decline => ctx.decline().await,
            Answer::Busy => ctx.decline_busy().await,
            Answer::Ring => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("could not answer {}: {e}", ctx.call_id());
        }
    }
}

/// Prints lines with the time since start; on a terminal, one progress
/// line is kept at the bottom and rewritten in place.
struct Out {
    start: Instant,
    tty: bool,
    progress: bool,
}

impl Out {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            progress: false,
        }
    }

    fn line(&mut self, text: impl std::fmt::Display) {
        if std::mem::take(&mut self.progress) {
            print!("\r\x1b[K");
        }
        println!("[{:6.2}s] {text}", self.start.elapsed().as_secs_f64());
    }

    /// A progress line: in place on a terminal, every 5 s otherwise.
    fn progress(&mut self, text: impl std::fmt::Display, secs_left: u64) {
        if self.tty {
            use std::io::Write;
            print!(
                "\r\x1b[K[{:6.2}s] {text}",
                self.start.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
            self.progress = true;
        } else if secs_left.is_multiple_of(5) {
            self.line(text);
        }
    }
}

fn reason_words(reason: Reason) -> &'static str {
    match reason {
        Reason::Accepted => "accepted",
        Reason::Declined => "declined",
        Reason::Busy => "busy",
        Reason::Timeout => "nobody answered in time",
        Reason::Canceled => "the caller canceled",
        Reason::CallerGone => "the caller's connection was lost",
        Reason::AnsweredElsewhere => "answered on another device",
        Reason::DeclinedElsewhere => "declined on another device",
        Reason::Unreachable => "unreachable",
        Reason::HungUp => "hung up",
        _ => "ended",
    }
}

fn stop_words(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Unauthorized => "the server refused the token",
        StopReason::Replaced => {
            "another client with the same user and device connected; this one stops \
             (use --device to run several)"
        }
        StopReason::TokenExpired => "the token expired (mint a new one)",
        StopReason::TokenProviderFailed => "no fresh token could be had",
        _ => "a failure that retrying cannot repair",
    }
}

fn names(users: &[User]) -> String {
    users
        .iter()
        .map(|u| u.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One event in words; `None` for what needs no line.
fn describe(event: &AppEvent) -> Option<String> {
    use AppEvent::*;
    Some(match event {
        IncomingCallReceived {
            call_id,
            caller,
            call_type,
            ring_remaining,
            ..
        } => {
            let kind = match call_type {
                CallType::Voice => "voice",
                _ => "video",
            };
            format!(
                "incoming {kind} call {call_id} from {} ({}), {} s to answer",
                caller.name,
                caller.id,
                ring_remaining.as_secs()
            )
        }
        IncomingCallCanceled {
            call_id, reason, ..
        } => format!("call {call_id} stopped ringing: {}", reason_words(*reason)),
        IncomingCallTimeout {
            call_id, caller, ..
        } => {
            format!("call {call_id} from {} was not answered in time", caller.id)
        }
        IncomingCallAcceptButtonPressed { call_id, .. } => format!("you accepted call {call_id}"),
        IncomingCallDeclineButtonPressed { call_id, busy, .. } => {
            let how = if *busy { " as busy" } else { "" };
            format!("you declined call {call_id}{how}")
        }
        OutgoingCallCancelButtonPressed { call_id, .. } => format!("you canceled call {call_id}"),
        OutgoingCallAccepted { callee, .. } => format!("{callee} accepted"),
        OutgoingCallRejectedCauseBusy { callee, .. } => format!("{callee} is busy"),
        OutgoingCallDeclined { callee, .. } => format!("{callee} declined"),
        OutgoingCallTimeout { callee, .. } => format!("{callee} did not answer in time"),
        AnsweredElsewhere {
            call_id, device, ..
        } => match device {
            Some(d) => format!("call {call_id} was answered on your device {d}"),
            None => format!("call {call_id} was answered on another device of yours"),
        },
        DeclinedElsewhere {
            call_id, device, ..
        } => match device {
            Some(d) => format!("call {call_id} was declined on your device {d}"),
            None => format!("call {call_id} was declined on another device of yours"),
        },
        CalleeRinging { callee, .. } => format!("{callee} is ringing"),
        CalleeOutcome { callee, reason, .. } => format!("{callee}: {}", reason_words(*reason)),
        OutgoingCallStarted {
            device, callees, ..
        } => format!("your device {device} is calling {}", names(callees)),
        CallEnded {
            call_id, reason, ..
        } => {
            format!("call {call_id} is over: {}", reason_words(*reason))
        }
        Resynced { live_calls: 0, .. } => return None,
        Resynced { live_calls, .. } => {
            format!("back in step with the server: {live_calls} live calls")
        }
        Connection(ConnectionState::Connected { resumed: true, .. }) => {
            "reconnected; nothing was missed".to_owned()
        }
        Connection(ConnectionState::Connected { resumed: false, .. }) => {
            "reconnected; catching up with the server".to_owned()
        }
        Connection(ConnectionState::Reconnecting) => "connection lost; reconnecting".to_owned(),
        Connection(ConnectionState::Stopped { reason }) => {
            format!("stopped: {}", stop_words(*reason))
        }
        _ => return None,
    })
}

fn status_words(status: InitialStatus) -> &'static str {
    match status {
        InitialStatus::Ringing => "ringing",
        InitialStatus::Offline => "offline: the invitation waits for them to connect",
        InitialStatus::Busy => "busy",
        InitialStatus::Unreachable => "unreachable (offline)",
        _ => "unknown",
    }
}

/// The user the token names, checked against `--user`.
fn user_from_token(token: &str, wanted: Option<&str>) -> Result<User> {
    let claims = UnverifiedClaims::peek(token).context("--token is not a valid token")?;
    let sub = claims
        .sub
        .context("the token names no user (no `sub` claim)")?;
    if let Some(wanted) = wanted {
        if wanted != sub {
            bail!("--user {wanted} does not match the token, which is for {sub}");
        }
    }
    let name = claims.name.filter(|n| !n.is_empty()).unwrap_or(sub.clone());
    Ok(User::new(UserId::new(&sub)?, &name)?)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("ws_client: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let user = user_from_token(&args.token, args.user.as_deref())?;
    let device = args
        .device
        .clone()
        .unwrap_or_else(|| format!("cli-{}", std::process::id()));
    let mut endpoint = Endpoint::new(args.url.clone());
    if let Some(ca) = &args.ca {
        endpoint = endpoint.tls(ClientTls::with_ca_file(ca)?);
    }
    let mut builder = Client::builder()
        .user(user.clone())
        .device(device.clone())
        .token(args.token.clone())
        .server(endpoint)
        .handler(Answerer(args.answer));
    if let Some(s) = args.ring_timeout {
        builder = builder.ring_timeout(Duration::from_secs(s));
    }
    let client = builder.build()?;
    let mut out = Out::new();
    let mut events = client.events();
    client
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    out.line(format!(
        "connected to {} as {} ({}), device {device}",
        args.url, user.name, user.id
    ));
    // The welcome itself was printed above.
    while let Ok(e) = events.try_recv() {
        if !matches!(e, AppEvent::Connection(ConnectionState::Connected { .. })) {
            if let Some(text) = describe(&e) {
                out.line(text);
            }
        }
    }
    let result = if args.call.is_empty() {
        out.line("waiting for calls (Ctrl-C to quit)");
        wait_for_calls(&mut out, &mut events).await
    } else {
        call(&args, &client, &mut out, &mut events).await
    };
    client.close().await;
    result
}

/// Prints what happens until Ctrl-C, or until the client stops.
async fn wait_for_calls(
    out: &mut Out,
    events: &mut tokio::sync::broadcast::Receiver<AppEvent>,
) -> Result<()> {
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            e = events.recv() => {
                let e = next(e)?;
                if let AppEvent::Connection(ConnectionState::Stopped { reason }) = e {
                    bail!("stopped: {}", stop_words(reason));
                }
                if let Some(text) = describe(&e) {
                    out.line(text);
                }
            }
        }
    }
}

/// One message per Enter key press. A plain thread: a blocking read of
/// stdin must not keep the runtime from shutting down.
fn enter_presses() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

fn next(e: Result<AppEvent, RecvError>) -> Result<AppEvent> {
    match e {
        Ok(e) => Ok(e),
        Err(RecvError::Lagged(n)) => bail!("the event stream dropped {n} events"),
        Err(RecvError::Closed) => bail!("the client stopped"),
    }
}

/// Invites, shows the ring, cancels on Enter or `--cancel-after`, hangs up
/// after an accept.
async fn call(
    args: &Args,
    client: &Client,
    out: &mut Out,
    events: &mut tokio::sync::broadcast::Receiver<AppEvent>,
) -> Result<()> {
    let kind = match args.call_type {
        Kind::Voice => CallType::Voice,
        Kind::Video => CallType::Video,
    };
    out.line(format!("calling {}", args.call.join(", ")));
    let call = client.invite(&args.call, kind, None).await?;
    if let Some(caller) = &call.joined {
        out.line(format!(
            "{} was calling you at the same moment: you joined their call {}",
            caller.id, call.call_id
        ));
    } else {
        // "Ringing" follows as its own event (a device has the invitation).
        for c in call
            .callees
            .iter()
            .filter(|c| c.status != InitialStatus::Ringing)
        {
            out.line(format!("{}: {}", c.user, status_words(c.status)));
        }
        out.line(format!(
            "call {} rings for {} s (Enter cancels)",
            call.call_id,
            call.ring_remaining.as_secs()
        ));
    }
    let started = Instant::now();
    let ring_end = started + call.ring_remaining;
    let cancel_at = args.cancel_after.map(|s| started + Duration::from_secs(s));
    let mut enter = enter_presses();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut answered = call.joined.is_some();
    let mut canceled = false;
    // The server ends every ring by the deadline; past this, something is wrong.
    let give_up = ring_end + Duration::from_secs(10);
    loop {
        let cancel_sleep = async {
            match cancel_at {
                Some(at) if !answered && !canceled => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            e = events.recv() => {
                let e = next(e)?;
                if let AppEvent::Connection(ConnectionState::Stopped { reason }) = e {
                    bail!("stopped: {}", stop_words(reason));
                }
                if let Some(text) = describe(&e) {
                    out.line(text);
                }
                match &e {
                    AppEvent::OutgoingCallAccepted { call_id, .. } if *call_id == call.call_id => {
                        answered = true;
                        out.line(format!("in the call; hanging up in {} s", args.hang_up_after));
                        tokio::time::sleep(Duration::from_secs(args.hang_up_after)).await;
                        client.hang_up(&call.call_id).await?;
                    }
                    AppEvent::CallEnded { call_id, .. } if *call_id == call.call_id => return Ok(()),
                    _ => {}
                }
            }
            Some(()) = enter.recv(), if !answered && !canceled => {
                out.line("canceling (Enter)");
                canceled = true;
                client.cancel(&call.call_id).await?;
            }
            () = tokio::time::sleep_until(give_up), if !answered => {
                bail!("no outcome from the server {} s after the ring deadline", 10);
            }
            () = cancel_sleep => {
                out.line(format!("nobody answered within {} s: canceling", args.cancel_after.unwrap_or(0)));
                canceled = true;
                client.cancel(&call.call_id).await?;
            }
            _ = tick.tick(), if !answered && !canceled && call.joined.is_none() => {
                let left = ring_end.saturating_duration_since(Instant::now()).as_secs();
                if left > 0 {
                    out.progress(format!("ringing, {left} s left (Enter cancels)"), left);
                }
            }
            _ = tokio::signal::ctrl_c() => {
                if !answered && !canceled {
                    out.line("canceling (Ctrl-C)");
                    client.cancel(&call.call_id).await?;
                }
                return Ok(());
            }
        }
    }
}
