//! The baselines: a bare tokio-tungstenite server with the same settings
//! as invitation-server (4 KiB read buffer, 64 KiB caps, eager writes).
//!
//! - Echo (any path): every text or binary frame is sent back. What we pay
//!   above it per message is our protocol, state and routing.
//! - Relay (`/relay/<pair>`): the two connections of a pair forward each
//!   other's frames, through a task hop as a server must (one connection's
//!   reader writes to another connection). Client -> relay -> client is the
//!   floor for invite -> ring: a message from one user's socket to
//!   another's, with no protocol, no state and no call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A connection waiting for its partner: its writer's sender, and where
/// the partner's sender goes.
struct Waiting {
    tx: mpsc::UnboundedSender<Message>,
    partner: oneshot::Sender<mpsc::UnboundedSender<Message>>,
}

/// Per pair, the first connection, until the second comes.
type Pairs = Arc<Mutex<HashMap<String, Waiting>>>;

pub(crate) async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let pairs: Pairs = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pairs = pairs.clone();
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0)
                .max_message_size(Some(64 * 1024))
                .max_frame_size(Some(64 * 1024));
            let mut path = String::new();
            // The callback's signature is tungstenite's (its error is an
            // HTTP response).
            #[allow(clippy::result_large_err)]
            let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                |req: &Request, resp: Response| {
                    path = req.uri().path().to_owned();
                    Ok(resp)
                },
                Some(config),
            )
            .await
            else {
                return;
            };
            match path.strip_prefix("/relay/") {
                Some(pair) => relay(ws, pair.to_owned(), pairs).await,
                None => echo(ws).await,
            }
        });
    }
}

async fn echo<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            break;
        }
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            break;
        }
    }
}

/// One side of a pair: frames read here go to the partner's writer task;
/// frames the partner sends are written here.
async fn relay<S>(ws: tokio_tungstenite::WebSocketStream<S>, pair: String, pairs: Pairs)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let waiting = pairs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pair);
    let to_partner = match waiting {
        // The second: takes the first's sender, gives it its own.
        Some(first) => {
            let _ = first.partner.send(tx);
            first.tx
        }
        // The first: waits for the second's sender.
        None => {
            let (partner, from_second) = oneshot::channel();
            pairs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pair, Waiting { tx, partner });
            match from_second.await {
                Ok(second) => second,
                Err(_) => return,
            }
        }
    };
    let mut writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(Ok(m)) = m else { break };
                if m.is_close() {
                    break;
                }
                if (m.is_text() || m.is_binary()) && to_partner.send(m).is_err() {
                    break;
                }
            }
            _ = &mut writer => break,
        }
    }
    writer.abort();
}
