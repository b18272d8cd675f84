//! The development demo (setting `dev_demo`, off by default): a page at
//! `/demo/` that rings between browsers with the JavaScript client, the
//! files it needs (embedded in the binary), a token endpoint that signs a
//! token for any user name, and the list of the demo's users with their
//! presence. With the setting off, every `/demo` path is a plain 404.
//!
//! The token endpoint lets anyone who reaches the port act as anyone: the
//! server warns loudly at start, and docs/operations.md says why it must
//! stay off in production.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use invitation_core::{User, UserId};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::Config;
use crate::hub::HubMsg;
use crate::server::Shared;

/// How long a demo token lives.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The most users the demo remembers (the newest token requests win).
pub(crate) const MAX_DEMO_USERS: usize = 64;
/// How long the user list waits for the hub.
const HUB_WAIT: Duration = Duration::from_secs(2);

/// The embedded files: path under `/demo/`, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../../clients/js/demo/index.html"),
    ),
    (
        "demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/demo/demo.js"),
    ),
    (
        "demo.css",
        "text/css; charset=utf-8",
        include_str!("../../../clients/js/demo/demo.css"),
    ),
    (
        "invitation/index.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/index.js"),
    ),
    (
        "invitation/src/client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/src/client.js"),
    ),
    (
        "invitation/src/session.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/src/session.js"),
    ),
    (
        "invitation/src/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/src/protocol.js"),
    ),
    (
        "invitation/src/errors.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../clients/js/src/errors.js"),
    ),
];

/// The users who asked the demo for a token, newest last (bounded).
#[derive(Debug, Default)]
pub(crate) struct DemoUsers(Mutex<VecDeque<User>>);

impl DemoUsers {
    /// Remembers `user` (again: it moves to the newest place).
    fn remember(&self, user: User) {
        let mut users = self.0.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|u| u.id != user.id);
        users.push_back(user);
        while users.len() > MAX_DEMO_USERS {
            users.pop_front();
        }
    }

    fn all(&self) -> Vec<User> {
        let users = self.0.lock().unwrap_or_else(|e| e.into_inner());
        users.iter().cloned().collect()
    }
}

/// Logs, loudly, that the demo is on (at start).
pub(crate) fn announce(config: &Config) {
    if config.dev_demo {
        tracing::warn!(
            "DEVELOPMENT DEMO ON (dev_demo): /demo/ serves a page and /demo/token signs a token \
             for ANY user name to anyone who can reach this port. Never turn this on in production."
        );
    }
}

/// With the demo on, a browser page served here may open a WebSocket:
/// its `Origin` is this server's own: the request's `Host`, on `https://`
/// when this server terminates TLS itself (`tls_cert`), else `http://`.
pub(crate) fn own_origin(config: &Config, origin: Option<&str>, head: &[u8]) -> bool {
    if !config.dev_demo {
        return false;
    }
    let Some(origin) = origin else {
        return false;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(head).is_err() {
        return false;
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{scheme}://{h}")))
}

/// Answers a `GET /demo...` request (`target`: path and query).
pub(crate) async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, target: &str, shared: &Shared) {
    let (status, content_type, body, location) = if shared.config.dev_demo {
        route(target, shared).await
    } else {
        (
            "404 Not Found",
            "text/plain",
            "not found\n".to_owned(),
            None,
        )
    };
    let _ = respond(stream, status, content_type, &body, location).await;
}

type Answer = (&'static str, &'static str, String, Option<&'static str>);

async fn route(target: &str, shared: &Shared) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(rest) = path.strip_prefix("/demo/") else {
        // `/demo` itself: the page's relative links need the slash.
        return (
            "308 Permanent Redirect",
            "text/plain",
            "see /demo/\n".to_owned(),
            Some("/demo/"),
        );
    };
    match rest {
        "token" => token(query, shared),
        "users" => users(shared).await,
        _ => match FILES.iter().find(|(p, _, _)| *p == rest) {
            Some((_, content_type, body)) => ("200 OK", content_type, (*body).to_owned(), None),
            None => (
                "404 Not Found",
                "text/plain",
                "not found\n".to_owned(),
                None,
            ),
        },
    }
}

fn bad(why: String) -> Answer {
    (
        "400 Bad Request",
        "application/json",
        serde_json::json!({ "error": why }).to_string(),
        None,
    )
}

/// `GET /demo/token?user=alice&name=Alice`: a token for that user.
fn token(query: &str, shared: &Shared) -> Answer {
    let mut user = None;
    let mut name = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else {
            return bad(format!("{k} is not valid percent-encoded UTF-8"));
        };
        match k {
            "user" => user = Some(v),
            "name" => name = Some(v),
            _ => return bad(format!("unknown parameter {k:?} (user, name)")),
        }
    }
    let Some(user) = user else {
        return bad("user is required".to_owned());
    };
    let id = match UserId::new(&user) {
        Ok(id) => id,
        Err(e) => return bad(format!("user: {e}")),
    };
    let name = name.unwrap_or_else(|| user.clone());
    let who = match User::new(id.clone(), &name) {
        Ok(u) => u,
        Err(e) => return bad(format!("name: {e}")),
    };
    let (token, exp) = shared.authority.mint_expiring(&id, &name, TOKEN_TTL);
    shared.demo.remember(who);
    tracing::info!(user = %id, "demo: signed a development token");
    (
        "200 OK",
        "application/json",
        serde_json::json!({ "user": id.as_str(), "name": name, "token": token, "exp": exp })
            .to_string(),
        None,
    )
}

/// `GET /demo/users`: the demo's users (newest first) with their presence.
async fn users(shared: &Shared) -> Answer {
    let mut out = Vec::new();
    for user in shared.demo.all().into_iter().rev() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = shared.hub.send(HubMsg::Presence {
            user: user.id.clone(),
            reply,
        });
        let presence = match tokio::time::timeout(HUB_WAIT, async {
            asked.await.ok()?;
            answer.await.ok()
        })
        .await
        {
            Ok(Some(p)) => p,
            _ => {
                return (
                    "503 Service Unavailable",
                    "application/json",
                    serde_json::json!({ "error": "the hub did not answer" }).to_string(),
                    None,
                );
            }
        };
        let mut entry = serde_json::to_value(&presence).unwrap_or_default();
        entry["name"] = serde_json::Value::String(user.name.to_string());
        out.push(entry);
    }
    (
        "200 OK",
        "application/json",
        serde_json::Value::Array(out).to_string(),
        None,
    )
}

/// Decodes `%XX` escapes and `+` (a space); `None` for a broken escape or
/// bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
    location: Option<&str>,
) -> std::io::Result<()> {
    let location = location.map_or(String::new(), |l| format!("location: {l}\r\n"));
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{location}\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         content-security-policy: default-src 'self'; connect-src 'self' ws: wss:\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("Ali%20ce+B").as_deref(), Some("Ali ce B"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn the_user_list_is_bounded_and_moves_a_returning_user_last() {
        let users = DemoUsers::default();
        for i in 0..MAX_DEMO_USERS + 5 {
            users.remember(User::named(&format!("u{i}"), ""));
        }
        users.remember(User::named("u10", "again"));
        let all = users.all();
        assert_eq!(all.len(), MAX_DEMO_USERS);
        assert_eq!(all[0].id.as_str(), "u5");
        assert_eq!(all.last().map(|u| u.id.as_str()), Some("u10"));
        assert_eq!(&*all.last().expect("one").name, "again");
    }

    #[test]
    fn own_origin_only_when_on_and_matching_the_host() {
        let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:7600\r\nUpgrade: websocket\r\n\r\n";
        let on = Config {
            dev_demo: true,
            ..Config::default()
        };
        assert!(own_origin(&on, Some("http://127.0.0.1:7600"), head));
        assert!(!own_origin(&on, Some("https://127.0.0.1:7600"), head));
        // A server with its own TLS: the page came over https.
        let tls = Config {
            dev_demo: true,
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..Config::default()
        };
        assert!(own_origin(&tls, Some("https://127.0.0.1:7600"), head));
        assert!(!own_origin(&tls, Some("http://127.0.0.1:7600"), head));
        assert!(!own_origin(&on, Some("http://evil.example"), head));
        assert!(!own_origin(&on, None, head));
        assert!(!own_origin(
            &Config::default(),
            Some("http://127.0.0.1:7600"),
            head
        ));
    }
}
