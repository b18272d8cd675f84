//! The development demo (`dev_demo`): off by default, every `/demo` path is
//! a 404 and the page's origin is refused; on, the page and the client's
//! modules are served, the token endpoint signs tokens the server accepts,
//! the user list shows presence, and the page's own origin may connect.

mod common;

use common::{Raw, SOON, server};
use invitation_core::protocol::ServerBody;
use invitation_server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 exchange: the whole response (the server closes).
async fn http(srv: &RunningServer, request: &str) -> String {
    tokio::time::timeout(SOON, async {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8(out).expect("UTF-8 response")
    })
    .await
    .expect("the server answered in time")
}

async fn get(srv: &RunningServer, target: &str) -> String {
    http(
        srv,
        &format!("GET {target} HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr),
    )
    .await
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn upgrade(host: &str, origin: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
    )
}

/// The status line of an upgrade request's answer.
async fn upgrade_status(srv: &RunningServer, origin: &str) -> String {
    tokio::time::timeout(SOON, async {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(upgrade(&srv.addr.to_string(), origin).as_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .expect("answered in time")
}

#[tokio::test]
async fn off_by_default_every_demo_path_is_a_404_and_the_page_origin_is_refused() {
    let srv = server(|_| {}).await;
    for target in [
        "/demo",
        "/demo/",
        "/demo/demo.js",
        "/demo/invitation/src/client.js",
        "/demo/token?user=alice",
        "/demo/users",
    ] {
        let r = get(&srv, target).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{target}: {r}");
        assert_eq!(body(&r), "not found\n", "{target}");
    }
    let own = format!("http://{}", srv.addr);
    assert_eq!(upgrade_status(&srv, &own).await, "HTTP/1.1 403");
}

#[tokio::test]
async fn on_serves_the_page_and_the_client_modules() {
    let srv = server(|c| c.dev_demo = true).await;
    let r = get(&srv, "/demo").await;
    assert!(r.starts_with("HTTP/1.1 308"), "{r}");
    assert!(r.contains("\r\nlocation: /demo/\r\n"), "{r}");
    let page = get(&srv, "/demo/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-type: text/html; charset=utf-8\r\n"));
    assert!(body(&page).contains(r#"<script type="module" src="demo.js"></script>"#));
    for (path, needle) in [
        ("/demo/demo.js", "from './invitation/index.js'"),
        ("/demo/demo.css", ".avatar"),
        ("/demo/invitation/index.js", "export { init"),
        (
            "/demo/invitation/src/client.js",
            "export class InvitationClient",
        ),
        ("/demo/invitation/src/session.js", "export class Session"),
        (
            "/demo/invitation/src/protocol.js",
            "export function decodeServerMessage",
        ),
        (
            "/demo/invitation/src/errors.js",
            "export class CommandError",
        ),
    ] {
        let r = get(&srv, path).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        assert!(body(&r).contains(needle), "{path} lacks {needle:?}");
    }
    let js = get(&srv, "/demo/invitation/src/client.js").await;
    assert!(js.contains("content-type: text/javascript; charset=utf-8\r\n"));
    assert!(js.contains("x-content-type-options: nosniff\r\n"));
    let missing = get(&srv, "/demo/../Cargo.toml").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let missing = get(&srv, "/demo/nope.js").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test]
async fn on_the_token_endpoint_signs_tokens_the_server_accepts_and_refuses_bad_names() {
    let srv = server(|c| c.dev_demo = true).await;
    let r = get(&srv, "/demo/token?user=alice&name=Alice%20A.").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let v: serde_json::Value = serde_json::from_str(body(&r)).expect("JSON");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["name"], "Alice A.");
    let token = v["token"].as_str().expect("a token");
    let identity = srv.authority.verify(token).expect("a token of this server");
    assert_eq!(identity.user.id.as_str(), "alice");
    assert_eq!(&*identity.user.name, "Alice A.");
    let exp = v["exp"].as_u64().expect("exp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        (now + 3590..=now + 3610).contains(&exp),
        "an hour: {exp} vs {now}"
    );
    // The server takes it.
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(token, "tab1", None).await;
    let welcome = raw.recv().await;
    let ServerBody::Welcome { user, .. } = welcome.body else {
        panic!("expected a welcome, got {welcome:?}");
    };
    assert_eq!(user.id.as_str(), "alice");
    assert_eq!(&*user.name, "Alice A.");
    // Bad input: a clear 400 naming the problem.
    for (target, says) in [
        ("/demo/token", "user is required"),
        ("/demo/token?user=", "user"),
        ("/demo/token?user=a%20b", "user"),
        ("/demo/token?user=bob&name=%01", "name"),
        ("/demo/token?user=%zz", "percent-encoded"),
        ("/demo/token?user=bob&admin=1", "unknown parameter"),
    ] {
        let r = get(&srv, target).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{target}: {r}");
        let v: serde_json::Value = serde_json::from_str(body(&r)).expect("JSON");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(says)),
            "{target}: {v}"
        );
    }
}

#[tokio::test]
async fn on_the_user_list_shows_the_demo_users_with_presence_newest_first() {
    let srv = server(|c| c.dev_demo = true).await;
    let empty = get(&srv, "/demo/users").await;
    assert_eq!(body(&empty), "[]");
    let bob = get(&srv, "/demo/token?user=bob&name=Bob").await;
    let alice = get(&srv, "/demo/token?user=alice").await;
    let token = |r: &str| {
        serde_json::from_str::<serde_json::Value>(body(r)).expect("JSON")["token"]
            .as_str()
            .expect("token")
            .to_owned()
    };
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(&token(&alice), "tab1", None).await;
    assert!(matches!(raw.recv().await.body, ServerBody::Welcome { .. }));
    let _ = token(&bob);
    let list: serde_json::Value =
        serde_json::from_str(body(&get(&srv, "/demo/users").await)).expect("JSON");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["user"], "alice");
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["online"], true);
    assert_eq!(list[0]["devices"], serde_json::json!(["tab1"]));
    assert_eq!(list[1]["user"], "bob");
    assert_eq!(list[1]["name"], "Bob");
    assert_eq!(list[1]["online"], false);
}

#[tokio::test]
async fn on_the_page_origin_may_connect_and_other_origins_still_may_not() {
    let srv = server(|c| c.dev_demo = true).await;
    let own = format!("http://{}", srv.addr);
    assert_eq!(upgrade_status(&srv, &own).await, "HTTP/1.1 101");
    assert_eq!(
        upgrade_status(&srv, "http://evil.example").await,
        "HTTP/1.1 403"
    );
    // An Origin naming this host on another scheme is not the page's.
    assert_eq!(
        upgrade_status(&srv, &format!("https://{}", srv.addr)).await,
        "HTTP/1.1 403"
    );
}

#[tokio::test]
async fn the_user_list_is_bounded() {
    let srv = server(|c| c.dev_demo = true).await;
    for i in 0..70 {
        let r = get(&srv, &format!("/demo/token?user=u{i}")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let list: serde_json::Value =
        serde_json::from_str(body(&get(&srv, "/demo/users").await)).expect("JSON");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 64, "the demo remembers the 64 newest users");
    assert_eq!(list[0]["user"], "u69");
    assert_eq!(list[63]["user"], "u6");
}
