//! TLS end to end, with certificates made for each test (rcgen): the server
//! terminating TLS itself on its main port (`wss://`, `/healthz`,
//! `/metrics`) and its API port, clients picking the transport from the
//! server URL, the errors a client tells apart (wrong scheme, unreachable
//! host, untrusted certificate, certificate for another name, plain server,
//! refused token), the bound on a client that never finishes its TLS
//! handshake, and webhooks delivered to an `https://` receiver.
//! (The flow suite over `wss://`: tests/flows.rs `wss::*`; the transport
//! conformance suite over `wss://`: tests/protocol.rs.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::tls::TestPki;
use common::*;
use invitation::prelude::*;
use invitation::transport::endpoint::{Backend, Endpoint, EndpointError};
use invitation::transport::ws::WsTransport;
use invitation::transport::{Transport, TransportError, TransportErrorKind};
use invitation::{BuildError, Invitation};
use invitation_server::RunningServer;
use invitation_server::webhook::verify;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A server on 127.0.0.1:0 serving TLS with `pki`'s certificate.
async fn tls_server(
    pki: &TestPki,
    tweak: impl FnOnce(&mut invitation_server::Config),
) -> RunningServer {
    server(|c| {
        pki.serve(c);
        tweak(c);
    })
    .await
}

/// A connected client of `user` on `endpoint`, with its event stream.
async fn client(
    srv: &RunningServer,
    user: &str,
    endpoint: Endpoint,
) -> (Client, tokio::sync::broadcast::Receiver<AppEvent>) {
    let client = Client::builder()
        .user(User::named(user, &user.to_uppercase()))
        .token(srv.token(user, &user.to_uppercase()))
        .server(endpoint)
        .build()
        .expect("builds");
    let events = client.events();
    tokio::time::timeout(SOON, client.connect())
        .await
        .expect("connects in time")
        .expect("connects");
    (client, events)
}

/// The next event that `pick` takes, within the deadline.
async fn next<T>(
    events: &mut tokio::sync::broadcast::Receiver<AppEvent>,
    mut pick: impl FnMut(&AppEvent) -> Option<T>,
) -> T {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(SOON, async {
        loop {
            let e = events.recv().await.expect("the event stream runs");
            if let Some(t) = pick(&e) {
                return t;
            }
            seen.push(e);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("not within {SOON:?}; saw {seen:?}"))
}

async fn connect_err(transport: &WsTransport) -> TransportError {
    match tokio::time::timeout(SOON, transport.connect()).await {
        Ok(Ok(_)) => panic!("connected, but should not have"),
        Ok(Err(e)) => e,
        Err(_) => panic!("no answer within {SOON:?}"),
    }
}

/// Two clients built from the server's `wss://` URL alone (the scheme picks
/// the WebSocket transport; the CA is the test's): an invitation with
/// custom data arrives, is accepted, and the caller hears it, each with the
/// same call id and the data sent.
#[tokio::test]
async fn a_call_over_wss_picked_by_url() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |_| {}).await;
    let url = srv.url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let endpoint = || Endpoint::new(url.clone()).tls(pki.client_tls());
    assert_eq!(endpoint().backend(), Ok(Backend::WebSocket));
    let (bob, mut bob_events) = client(&srv, "bob", endpoint()).await;
    let (alice, mut alice_events) = client(&srv, "alice", endpoint()).await;

    let data = CustomData::new(r#"{"room":"r1"}"#).unwrap();
    let Invitation { call_id, .. } = alice
        .invite(["bob"], CallType::Video, Some(data.clone()))
        .await
        .expect("invited");
    let (got_call, caller, call_type, got_data) = next(&mut bob_events, |e| match e {
        AppEvent::IncomingCallReceived {
            call_id,
            caller,
            call_type,
            custom_data,
            ..
        } => Some((
            call_id.clone(),
            caller.clone(),
            *call_type,
            custom_data.clone(),
        )),
        _ => None,
    })
    .await;
    assert_eq!(got_call, call_id);
    assert_eq!(caller.id.as_str(), "alice");
    assert_eq!(&*caller.name, "ALICE");
    assert_eq!(call_type, CallType::Video);
    assert_eq!(got_data, Some(data));

    bob.accept(&call_id).await.expect("accepted");
    let (accepted, callee) = next(&mut alice_events, |e| match e {
        AppEvent::OutgoingCallAccepted {
            call_id, callee, ..
        } => Some((call_id.clone(), callee.clone())),
        _ => None,
    })
    .await;
    assert_eq!(accepted, call_id);
    assert_eq!(callee.as_str(), "bob");
    alice.close().await;
    bob.close().await;
    srv.stop().await;
}

/// `/healthz` and `/metrics` answer over https on the main port, and the
/// API over https on its own port; a plain-HTTP request to the TLS port
/// gets no HTTP answer.
#[tokio::test]
async fn health_metrics_and_api_answer_over_https() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |c| {
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec!["api-key-tls-0123456789abcdef0123456789".to_owned()];
    })
    .await;
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured((*pki.client_tls().config()).clone())
        .timeout(SOON)
        .build()
        .unwrap();
    let get = |url: String| {
        let https = https.clone();
        async move {
            let resp = https
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(
        get(format!("https://127.0.0.1:{}/healthz", srv.addr.port())).await,
        (200, "ok\n".to_owned())
    );
    let (status, metrics) = get(format!("https://localhost:{}/metrics", srv.addr.port())).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("invitation_connections_accepted_total "),
        "{metrics}"
    );
    let api = srv.api_addr.expect("the API is on");
    let (status, openapi) = get(format!("https://127.0.0.1:{}/v1/openapi.json", api.port())).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&openapi).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    // The API refuses a request without a key: the same answer over TLS.
    let (status, _) = get(format!(
        "https://127.0.0.1:{}/v1/users/bob/presence",
        api.port()
    ))
    .await;
    assert_eq!(status, 401);

    // Plain HTTP to the TLS port: the handshake fails, nothing is served.
    let plain = reqwest::Client::builder()
        .tls_backend_preconfigured((*pki.client_tls().config()).clone())
        .timeout(SOON)
        .build()
        .unwrap();
    let e = plain
        .get(format!("http://127.0.0.1:{}/healthz", srv.addr.port()))
        .send()
        .await
        .expect_err("a TLS port does not answer plain HTTP");
    assert!(!e.is_timeout(), "{e}");
    srv.stop().await;
}

/// Each way of failing to reach a server has its own error: a URL with a
/// wrong scheme fails `build`; nothing listening is `Io` "connection
/// refused"; a certificate from a CA the client does not trust, or made for
/// another name, is `Certificate`; `wss://` to a plain server is
/// `Protocol`; a refused token is `ClientError::Unauthorized`. None of them
/// is retried by a client that never connected.
#[tokio::test]
async fn each_failure_has_its_own_error() {
    // Wrong scheme: found by the builder, before any I/O.
    let built = Client::builder()
        .user(User::named("alice", "Alice"))
        .server("ftp://127.0.0.1:1/")
        .build();
    match built {
        Err(BuildError::Endpoint(EndpointError::UnsupportedScheme { scheme, .. })) => {
            assert_eq!(scheme, "ftp")
        }
        other => panic!("expected UnsupportedScheme, got {other:?}"),
    }

    // Unreachable: a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let e = connect_err(&WsTransport::new(format!("wss://127.0.0.1:{port}/"))).await;
    assert_eq!(e.kind(), TransportErrorKind::Io);
    assert_eq!(
        e.to_string(),
        format!("connection refused at 127.0.0.1:{port}")
    );

    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |_| {}).await;
    let at = format!("127.0.0.1:{}", srv.addr.port());

    // Untrusted: the client trusts another CA.
    let stranger = TestPki::loopback();
    let e = connect_err(&WsTransport::new(srv.url()).tls(stranger.client_tls())).await;
    assert_eq!(e.kind(), TransportErrorKind::Certificate, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        e.to_string(),
        format!("the certificate of {at} is not trusted: it is not signed by a trusted CA")
    );

    // Name mismatch: the certificate names `localhost` only; the client
    // dials 127.0.0.1.
    let named = TestPki::new(&["localhost"]);
    let other = tls_server(&named, |_| {}).await;
    let other_at = format!("127.0.0.1:{}", other.addr.port());
    let e = connect_err(&WsTransport::new(other.url()).tls(named.client_tls())).await;
    assert_eq!(e.kind(), TransportErrorKind::Certificate, "{e}");
    assert_eq!(
        e.to_string(),
        format!("the certificate of {other_at} is not valid for the name \"127.0.0.1\"")
    );
    // ... and the same server by the name it has: connects.
    let by_name = format!("wss://localhost:{}/", other.addr.port());
    let conn = tokio::time::timeout(
        SOON,
        WsTransport::new(by_name).tls(named.client_tls()).connect(),
    )
    .await
    .expect("in time");
    assert!(conn.is_ok(), "{:?}", conn.err());
    other.stop().await;

    // wss:// to a plain server.
    let plain = server(|_| {}).await;
    let wss = format!("wss://127.0.0.1:{}/", plain.addr.port());
    let e = connect_err(&WsTransport::new(wss).tls(pki.client_tls())).await;
    assert_eq!(e.kind(), TransportErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("does it serve TLS?"), "{e}");
    plain.stop().await;

    // A refused token, over wss.
    let refused = Client::builder()
        .user(User::named("alice", "Alice"))
        .token("not-a-token")
        .server(Endpoint::new(srv.url()).tls(pki.client_tls()))
        .build()
        .unwrap();
    match tokio::time::timeout(SOON, refused.connect())
        .await
        .expect("in time")
    {
        Err(ClientError::Unauthorized(_)) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }

    // The same certificate failure through the client: it stops with it.
    let untrusting = Client::builder()
        .user(User::named("alice", "Alice"))
        .token(srv.token("alice", "Alice"))
        .server(Endpoint::new(srv.url()).tls(stranger.client_tls()))
        .build()
        .unwrap();
    match tokio::time::timeout(SOON, untrusting.connect())
        .await
        .expect("in time")
    {
        Err(ClientError::Transport(e)) => {
            assert_eq!(e.kind(), TransportErrorKind::Certificate, "{e}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    srv.stop().await;
}

/// `https://` picks the HTTP transport; forced to WebSocket,
/// `https://host:port/` dials `wss://host:port/`.
#[tokio::test]
async fn a_forced_websocket_dials_an_https_url_as_wss() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |_| {}).await;
    let https = format!("https://127.0.0.1:{}/", srv.addr.port());
    assert_eq!(
        Endpoint::new(https.clone()).backend(),
        Ok(invitation::transport::endpoint::Backend::Http)
    );
    let forced = Endpoint::new(https)
        .force(Backend::WebSocket)
        .tls(pki.client_tls());
    let (alice, _) = client(&srv, "alice", forced).await;
    assert!(alice.is_connected());
    alice.close().await;
    srv.stop().await;
}

/// A client that opens a TCP connection and never starts TLS holds its slot
/// for the handshake timeout, no longer: meanwhile a second client is
/// turned away (the only slot is taken), then the server drops the silent
/// one (counted as a handshake refusal) and the next client gets in.
#[tokio::test]
async fn a_silent_tls_client_holds_its_slot_for_the_handshake_timeout_only() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |c| {
        c.max_connections = 1;
        c.handshake_timeout_s = 2;
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let e = connect_err(&WsTransport::new(srv.url()).tls(pki.client_tls())).await;
    assert_eq!(
        e.to_string(),
        format!(
            "127.0.0.1:{} refused the WebSocket upgrade with HTTP 503 Service Unavailable",
            srv.addr.port()
        ),
        "the slot is taken while the silent client handshakes"
    );
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SOON, silent.read(&mut buf))
        .await
        .expect("the server drops the silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(1900) && held < SOON,
        "held for {held:?}"
    );
    let metrics = srv.metrics.render();
    assert!(
        metrics.contains("invitation_connections_refused_total{reason=\"handshake\"} 1\n"),
        "{metrics}"
    );
    let (alice, _) = client(
        &srv,
        "alice",
        Endpoint::new(srv.url()).tls(pki.client_tls()),
    )
    .await;
    assert!(alice.is_connected());
    alice.close().await;
    srv.stop().await;
}

/// The API port: a client that never finishes the TLS handshake is dropped
/// after the handshake timeout.
#[tokio::test]
async fn a_silent_tls_client_of_the_api_is_dropped_after_the_handshake_timeout() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |c| {
        c.handshake_timeout_s = 1;
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec!["api-key-tls-0123456789abcdef0123456789".to_owned()];
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(srv.api_addr.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(SOON, silent.read(&mut buf))
        .await
        .expect("the API drops the silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < SOON,
        "held for {held:?}"
    );
    srv.stop().await;
}

/// Bad certificate or key files stop the start with an error naming the
/// file.
#[tokio::test]
async fn bad_tls_files_stop_the_start_naming_the_file() {
    let pki = TestPki::loopback();
    let junk = pki.dir.0.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let config = |cert: &std::path::Path, key: &std::path::Path| invitation_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        ..Default::default()
    };
    let e = invitation_server::Server::bind(config(&junk, &pki.key))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "tls_cert {}: no certificate found (expected a PEM certificate)",
            junk.display()
        )
    );
    let e = invitation_server::Server::bind(config(&pki.cert, &pki.ca))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "tls_key {}: no private key found (expected a PEM private key)",
            pki.ca.display()
        )
    );
}

// ----- webhooks to an https receiver --------------------------------------

const HOOK_SECRET: &str = "whsec-tls-0123456789abcdef0123456789";

/// An axum receiver serving TLS with `pki`'s certificate: answers 204 and
/// passes on each request's signature header and body.
async fn https_receiver(
    pki: &TestPki,
) -> (String, mpsc::UnboundedReceiver<(Option<String>, String)>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    struct TlsListener(tokio::net::TcpListener, tokio_rustls::TlsAcceptor);
    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;
        async fn accept(&mut self) -> (Self::Io, SocketAddr) {
            loop {
                let Ok((tcp, peer)) = self.0.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.1.accept(tcp).await {
                    return (tls, peer);
                }
            }
        }
        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.0.local_addr()
        }
    }

    let (app, rx) = signed_router(|| true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/hook",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(TlsListener(listener, acceptor), app).await });
    (url, rx)
}

/// A call's first events reach an `https://` receiver whose certificate
/// comes from the CA in `outbound_ca_file`, signed, in order, with the call's
/// data.
#[tokio::test]
async fn webhooks_reach_an_https_receiver() {
    let receiver_pki = TestPki::new(&["localhost"]);
    let (url, mut rx) = https_receiver(&receiver_pki).await;
    let srv = server(|c| {
        c.webhook_urls = vec![url.clone()];
        c.webhook_secrets = vec![HOOK_SECRET.to_owned()];
        c.outbound_ca_file = Some(receiver_pki.ca.clone());
    })
    .await;
    let (_bob, mut bob_events) = client(&srv, "bob", Endpoint::new(srv.url())).await;
    let (alice, _) = client(&srv, "alice", Endpoint::new(srv.url())).await;
    let call = alice
        .invite(["bob"], CallType::Voice, None)
        .await
        .expect("invited");
    next(&mut bob_events, |e| {
        matches!(e, AppEvent::IncomingCallReceived { .. }).then_some(())
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (signature, body) = tokio::time::timeout(SOON, rx.recv())
            .await
            .expect("a webhook within the deadline")
            .expect("the receiver runs");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        verify(
            &[HOOK_SECRET],
            signature.as_deref(),
            body.as_bytes(),
            now,
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("{e}: {signature:?} {body}"));
        let event: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["call_id"], call.call_id.as_str(), "{event}");
        got.push((
            event["type"].as_str().unwrap().to_owned(),
            event["data"].clone(),
        ));
    }
    assert_eq!(got[0].0, "call.invited");
    assert_eq!(got[0].1["caller"], "alice");
    assert_eq!(got[0].1["callees"], json!(["bob"]));
    assert_eq!(
        got[1],
        (
            "call.ringing".to_owned(),
            json!({"caller": "alice", "callee": "bob"})
        )
    );
    assert_eq!(
        srv.metrics
            .webhook_failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "delivered at the first attempt"
    );
    alice.close().await;
    srv.stop().await;
}

/// An https receiver whose certificate the server does not trust (system
/// roots only, a test CA) gets nothing: each attempt fails and is counted.
#[tokio::test]
async fn an_untrusted_https_receiver_gets_nothing() {
    let receiver_pki = TestPki::new(&["localhost"]);
    let (url, mut rx) = https_receiver(&receiver_pki).await;
    let other_ca = TestPki::loopback();
    let srv = server(|c| {
        c.webhook_urls = vec![url.clone()];
        c.webhook_secrets = vec![HOOK_SECRET.to_owned()];
        c.outbound_ca_file = Some(other_ca.ca.clone());
    })
    .await;
    let (_bob, _) = client(&srv, "bob", Endpoint::new(srv.url())).await;
    let (alice, _) = client(&srv, "alice", Endpoint::new(srv.url())).await;
    alice
        .invite(["bob"], CallType::Voice, None)
        .await
        .expect("invited");
    let failed = tokio::time::timeout(SOON, async {
        loop {
            let n = srv
                .metrics
                .webhook_failed_attempts
                .load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a failed attempt is counted");
    assert!(failed >= 1);
    assert!(rx.try_recv().is_err(), "nothing reached the receiver");
    alice.close().await;
    srv.stop().await;
}

/// An unreadable `outbound_ca_file` stops the start, naming the file.
#[tokio::test]
async fn a_missing_outbound_ca_stops_the_start() {
    let dir = TempDir::new("no-ca");
    let missing = dir.0.join("ca.pem");
    let e = invitation_server::Server::bind(invitation_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        webhook_urls: vec!["https://hooks.example/in".to_owned()],
        webhook_secrets: vec![HOOK_SECRET.to_owned()],
        outbound_ca_file: Some(missing.clone()),
        ..Default::default()
    })
    .await
    .err()
    .expect("refused");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "outbound TLS: cannot read the CA file {}: ",
            missing.display()
        )),
        "{text}"
    );
}

/// A self-signed certificate marked as a CA (what `openssl req -x509`
/// makes by default) served as the server's own: the client trusts it, yet
/// refuses it as a server certificate, and says why.
#[tokio::test]
async fn a_ca_certificate_served_as_the_server_certificate_is_named() {
    let dir = TempDir::new("ca-as-leaf");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let srv = server(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    let trusted = invitation::transport::tls::ClientTls::with_ca_file(&cert_path).unwrap();
    let e = connect_err(&WsTransport::new(srv.url()).tls(trusted)).await;
    assert_eq!(e.kind(), TransportErrorKind::Certificate, "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "the certificate of 127.0.0.1:{} is refused: it is a CA certificate used as a \
             server certificate (make the server's certificate with CA:FALSE, signed by the CA)",
            srv.addr.port()
        )
    );
    srv.stop().await;
}

/// `tls::tls_failure` finds the certificate failure inside an HTTP
/// client's error too (reqwest, as an https transport sees it), so every
/// transport can say it the same way.
#[tokio::test]
async fn an_https_clients_certificate_failure_is_named_the_same_way() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |_| {}).await;
    let stranger = TestPki::loopback();
    let https = reqwest::Client::builder()
        .tls_backend_preconfigured((*stranger.client_tls().config()).clone())
        .timeout(SOON)
        .build()
        .unwrap();
    let at = format!("127.0.0.1:{}", srv.addr.port());
    let e = https
        .get(format!("https://{at}/healthz"))
        .send()
        .await
        .expect_err("an untrusted certificate");
    let named =
        invitation::transport::tls::tls_failure(&e, &at, "127.0.0.1").unwrap_or_else(|| {
            let mut chain = Vec::new();
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cur {
                chain.push(format!("{c:?}"));
                cur = c.source();
            }
            panic!("no TLS failure in the chain: {chain:#?}")
        });
    assert_eq!(named.kind(), TransportErrorKind::Certificate);
    assert_eq!(
        named.to_string(),
        format!("the certificate of {at} is not trusted: it is not signed by a trusted CA")
    );
    srv.stop().await;
}

/// The push gateway may be `https://` too (trusted through
/// `outbound_ca_file`): bob's phone registers, goes away, and alice's call
/// reaches the gateway as a signed ring with the whole ring to live.
#[tokio::test]
async fn pushes_reach_an_https_gateway() {
    let gateway_pki = TestPki::new(&["localhost"]);
    let (url, mut rx) = https_receiver(&gateway_pki).await;
    let srv = server(|c| {
        c.push_gateway_url = Some(url.clone());
        c.push_secrets = vec![HOOK_SECRET.to_owned()];
        c.outbound_ca_file = Some(gateway_pki.ca.clone());
    })
    .await;
    let (bob, _) = client(&srv, "bob", Endpoint::new(srv.url())).await;
    tokio::time::timeout(
        SOON,
        bob.register_push(invitation_core::protocol::PushPlatform::Apns, "apns-tok"),
    )
    .await
    .expect("answered in time")
    .expect("registered");
    bob.close().await;
    let (alice, _) = client(&srv, "alice", Endpoint::new(srv.url())).await;
    let call = alice
        .invite(["bob"], CallType::Voice, None)
        .await
        .expect("invited");
    let push = next_signed(&mut rx, HOOK_SECRET).await;
    assert_eq!(push["type"], "ring", "{push}");
    assert_eq!(push["call_id"], call.call_id.as_str());
    assert_eq!(push["collapse_id"], call.call_id.as_str());
    assert_eq!(push["token"], "apns-tok");
    assert_eq!(push["ttl_ms"], 60_000);
    srv.stop().await;
}

/// The HTTP transport over `https://`, picked by the URL: a call goes
/// through with the test CA trusted; with another CA trusted the client
/// stops with a certificate error, named as such (not retried).
#[tokio::test]
async fn an_https_url_picks_the_http_transport_and_checks_the_certificate() {
    let pki = TestPki::loopback();
    let srv = tls_server(&pki, |_| {}).await;
    let https = format!("https://127.0.0.1:{}/", srv.addr.port());
    let (bob, mut bob_events) =
        client(&srv, "bob", Endpoint::new(&https).tls(pki.client_tls())).await;
    let (alice, _) = client(&srv, "alice", Endpoint::new(&https).tls(pki.client_tls())).await;
    let call = alice
        .invite(["bob"], CallType::Video, None)
        .await
        .expect("invited over https");
    let got = next(&mut bob_events, |e| match e {
        AppEvent::IncomingCallReceived {
            call_id, caller, ..
        } => Some((call_id.clone(), caller.id.to_string())),
        _ => None,
    })
    .await;
    assert_eq!(got, (call.call_id.clone(), "alice".to_owned()));

    let stranger = TestPki::loopback();
    let untrusting = Client::builder()
        .user(User::named("carol", "CAROL"))
        .token(srv.token("carol", "CAROL"))
        .server(Endpoint::new(&https).tls(stranger.client_tls()))
        .build()
        .unwrap();
    match tokio::time::timeout(SOON, untrusting.connect())
        .await
        .expect("in time")
    {
        Err(ClientError::Transport(e)) => {
            assert_eq!(e.kind(), TransportErrorKind::Certificate, "{e}");
            assert!(!e.is_retryable(), "{e}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    drop(bob);
    srv.stop().await;
}
