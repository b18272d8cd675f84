//! A push gateway that logs what it would send (docs/push.md): it checks
//! each request's signature, then prints the APNs, FCM or Web Push request
//! an operator's real sender would make for it: expiry from the ring time
//! left, the call id as collapse id, a "stop ringing" push that replaces
//! the ring on the phone.
//!
//! Two ways to run it:
//!
//! - `cargo run -p invitation-server --example push_gateway`: a
//!   self-contained demo. It starts the gateway and a server pointed at it
//!   in this process, registers bob's phone for push, rings bob while the
//!   phone is offline, cancels, and prints the two pushes; then exits.
//! - `cargo run -p invitation-server --example push_gateway -- --listen
//!   127.0.0.1:7700 --secret <push secret>`: the gateway alone, for a
//!   server started with `push_gateway_url = "http://127.0.0.1:7700/push"`
//!   and the same secret in `push_secrets`. Stops with Ctrl-C.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::http::{HeaderMap, StatusCode};
use invitation::prelude::*;
use invitation::transport::ws::WsTransport;
use invitation_core::protocol::PushPlatform;
use invitation_server::webhook::{SIGNATURE_HEADER, verify};
use invitation_server::{Config, Server};
use serde_json::Value;
use tokio::sync::mpsc;

const DEMO_SECRET: &str = "example-push-secret-0123456789abcdef";

/// What a real sender would do with one request, as lines to print.
fn what_to_send(push: &Value) -> Vec<String> {
    let text = |k: &str| push[k].as_str().unwrap_or("?").to_owned();
    let ttl_s = push["ttl_ms"].as_u64().unwrap_or(0).div_ceil(1000);
    let expires_s = push["expires_at"].as_u64().unwrap_or(0) / 1000;
    let (kind, collapse) = (text("type"), text("collapse_id"));
    let token = text("token");
    let short = |t: &str| t.chars().take(12).collect::<String>();
    let mut lines = vec![format!(
        "{kind} for {}/{} ({}), call {}, {} ms to live",
        text("user"),
        text("device"),
        text("platform"),
        text("call_id"),
        push["ttl_ms"]
    )];
    let what = if kind == "ring" {
        let call = &push["call"];
        format!(
            "{} call from {}",
            call["call_type"].as_str().unwrap_or("?"),
            call["caller"]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or(call["caller"]["id"].as_str())
                .unwrap_or("?")
        )
    } else {
        format!("stop ringing ({})", text("reason"))
    };
    match push["platform"].as_str() {
        Some("apns") => {
            // A ring is a VoIP push (CallKit shows the call); a stop
            // replaces it under the same collapse id.
            lines.push(format!(
                "  POST https://api.push.apple.com/3/device/{}...",
                short(&token)
            ));
            lines.push(format!(
                "  apns-push-type: voip  apns-priority: 10  apns-expiration: {expires_s}  apns-collapse-id: {collapse}"
            ));
            lines.push(format!("  payload: {what}"));
        }
        Some("fcm") => {
            lines.push(
                "  POST https://fcm.googleapis.com/v1/projects/<project>/messages:send".to_owned(),
            );
            lines.push(format!(
                "  token {}...  android.priority: high  android.ttl: {ttl_s}s  android.collapse_key: {collapse}",
                short(&token)
            ));
            lines.push(format!("  data: {what}"));
        }
        Some("web_push") => {
            lines.push("  POST <the subscription's endpoint>".to_owned());
            lines.push(format!(
                "  TTL: {ttl_s}  Urgency: high  Topic: <{collapse} as 32 URL-safe characters>"
            ));
            lines.push(format!("  encrypted payload: {what}"));
        }
        _ => lines.push(format!("  (unknown platform) {what}")),
    }
    lines
}

/// The gateway: verifies, prints, answers 204 (401 for a bad signature,
/// 400 for a body that is not a push).
async fn gateway(
    listener: tokio::net::TcpListener,
    secrets: Vec<String>,
    seen: mpsc::UnboundedSender<Value>,
) -> Result<()> {
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let secrets = secrets.clone();
            let seen = seen.clone();
            async move {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
                if let Err(e) = verify(
                    &secrets,
                    signature,
                    body.as_bytes(),
                    now,
                    Duration::from_secs(300),
                ) {
                    println!("refused a request: {e}");
                    return StatusCode::UNAUTHORIZED;
                }
                let Ok(push) = serde_json::from_str::<Value>(&body) else {
                    return StatusCode::BAD_REQUEST;
                };
                for line in what_to_send(&push) {
                    println!("{line}");
                }
                let _ = seen.send(push);
                StatusCode::NO_CONTENT
            }
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// The next push the gateway printed.
async fn next_push(seen: &mut mpsc::UnboundedReceiver<Value>) -> Result<Value> {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .context("no push within 10 s")?
        .context("the gateway stopped")
}

/// The demo: a server pointed at the gateway, bob's phone registered and
/// offline, alice rings him and cancels.
async fn demo() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/push", listener.local_addr()?);
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(gateway(listener, vec![DEMO_SECRET.to_owned()], tx));

    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        secret: Some("example-secret-0123456789".to_owned()),
        push_gateway_url: Some(url.clone()),
        push_secrets: vec![DEMO_SECRET.to_owned()],
        ..Config::default()
    };
    let server = Server::bind(config).await?.spawn();
    println!("server on {}, push gateway on {url}\n", server.url());
    let client = |user: &str, name: &str, device: &str| -> Result<Client> {
        Ok(Client::builder()
            .user(User::named(user, name))
            .device(device)
            .token(server.token(user, name))
            .transport(WsTransport::new(server.url()))
            .build()?)
    };

    // Bob's phone registers its APNs token, then the app is killed.
    let phone = client("bob", "Bob", "iphone")?;
    phone.connect().await?;
    phone
        .register_push(PushPlatform::Apns, "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6")
        .await?;
    phone.close().await;
    println!("bob's iphone registered for push and went away\n");

    let alice = client("alice", "Alice", "laptop")?;
    alice.connect().await?;
    let call = alice.invite(["bob"], CallType::Video, None).await?;
    let ring = next_push(&mut seen).await?;
    println!();
    tokio::time::sleep(Duration::from_millis(1500)).await; // let it ring a moment
    alice.cancel(&call.call_id).await?;
    let stop = next_push(&mut seen).await?;
    if ring["type"] != "ring" || stop["type"] != "stop" || stop["reason"] != "canceled" {
        bail!("unexpected pushes: {ring} then {stop}");
    }
    println!("\nthe phone rang by push and was told to stop when alice canceled");
    alice.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    match value("--listen") {
        None => demo().await,
        Some(listen) => {
            let addr: SocketAddr = listen.parse().context("--listen takes host:port")?;
            let Some(secret) = value("--secret") else {
                bail!("--secret <the server's push secret> is required with --listen");
            };
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("push gateway on http://{addr}/push (Ctrl-C stops it)");
            let (tx, _seen) = mpsc::unbounded_channel();
            tokio::select! {
                served = gateway(listener, vec![secret], tx) => served,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}
