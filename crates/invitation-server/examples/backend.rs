//! What an app's backend does with the server's HTTP API
//! (docs/http-api.md), against a real server in this process: mint a token
//! for bob's phone, start a call from alice to bob, read its live state,
//! see bob answer, end it, and read the call's record.
//!
//! Run: `cargo run -p invitation-server --example backend`

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use invitation::Fanout;
use invitation::prelude::*;
use invitation::testing::Recorder;
use invitation::transport::ws::WsTransport;
use invitation_server::{Config, Server};
use serde_json::{Value, json};

const API_KEY: &str = "example-api-key-0123456789abcdef0123456789";

/// Bob's phone: accepts whatever rings.
struct Answers;

#[async_trait]
impl InvitationEvents for Answers {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        _: CallType,
        _: &[User],
        data: Option<&CustomData>,
    ) {
        println!(
            "  [bob's phone] {call_id} from {} (data {:?}): accepting",
            caller.id,
            data.map(CustomData::as_str)
        );
        if let Err(e) = ctx.accept().await {
            println!("  [bob's phone] accept failed: {e}");
        }
    }
}

/// One API call: the method, the path, an optional JSON body; the status
/// and the JSON answer.
async fn api(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut req = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(API_KEY);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .context("the API did not answer in time")??;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    println!("{method} {path} -> {status} {value}");
    Ok((status, value))
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("invitation-backend-example-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        api_listen: "127.0.0.1:0".parse()?,
        api_keys: vec![API_KEY.to_owned()],
        // Durable, so that the ended call leaves a record.
        data_dir: Some(dir.clone()),
        ..Config::default()
    };
    let srv = Server::bind(config).await?.spawn();
    let base = format!("http://{}", srv.api_addr.context("the API is on")?);
    println!("WebSocket on {}, API on {base}", srv.url());
    let http = reqwest::Client::new();

    println!("1. the backend mints a token for bob's phone; the phone connects with it");
    let (_, minted) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/v1/tokens",
        Some(json!({"user": "bob", "name": "Bob", "ttl_s": 3600})),
    )
    .await?;
    let token = minted["token"].as_str().context("a token")?.to_owned();
    let rec = Recorder::with_deadline(Duration::from_secs(10));
    let bob = Client::builder()
        .user(User::named("bob", "Bob"))
        .device("phone")
        .token(token)
        .transport(WsTransport::new(srv.url()))
        .handler(Fanout(vec![Arc::new(Answers), Arc::new(rec.clone())]))
        .build()?;
    bob.connect().await?;
    api(
        &http,
        &base,
        reqwest::Method::GET,
        "/v1/users/bob/presence",
        None,
    )
    .await?;

    println!("2. the backend starts a call from alice to bob (alice has no device online)");
    let (status, started) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/v1/calls",
        Some(
            json!({"caller": "alice", "caller_name": "Alice", "callees": ["bob"],
                    "call_type": "video", "custom_data": "{\"room\":\"r-42\"}"}),
        ),
    )
    .await?;
    if status != 201 {
        bail!("the call was not started: {started}");
    }
    let call_id = started["call_id"].as_str().context("a call id")?.to_owned();

    println!("3. bob's phone rings and accepts; the backend reads the call's state");
    rec.try_wait_for(Callback::IncomingCallAcceptButtonPressed, 1)
        .await?;
    api(
        &http,
        &base,
        reqwest::Method::GET,
        &format!("/v1/calls/{call_id}"),
        None,
    )
    .await?;

    println!("4. the backend ends the call, then reads alice's call records");
    api(
        &http,
        &base,
        reqwest::Method::DELETE,
        &format!("/v1/calls/{call_id}"),
        None,
    )
    .await?;
    // Answered once journaled, the record written with it: it is there.
    api(
        &http,
        &base,
        reqwest::Method::GET,
        "/v1/users/alice/records?limit=10",
        None,
    )
    .await?;

    bob.close().await;
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
