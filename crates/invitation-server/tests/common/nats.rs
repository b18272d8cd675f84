//! A real `nats-server` with JetStream for the cluster tests, started on a
//! loopback port of its own choosing with a temporary store.
//!
//! Without `nats-server` on the PATH, [`nats_server`] says so and returns
//! `None` (the test passes, having said it skipped), unless
//! `INVITATION_REQUIRE_NATS=1` (set by `.ci/run`, which installs it): then
//! its absence fails the test.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `nats-server -js` on 127.0.0.1, stopped (and its store removed) on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    store: std::path::PathBuf,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Starts one, or `None` (after saying why) when `nats-server` is missing
/// and not required.
pub async fn nats_server(test: &str) -> Option<NatsServer> {
    let store = std::env::temp_dir().join(format!("inv-nats-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();
    let spawned = spawn(&store, "-1");
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("INVITATION_REQUIRE_NATS").as_deref() != Ok("1"),
                "nats-server is not installed, and INVITATION_REQUIRE_NATS=1 requires it"
            );
            // Straight to the process's stderr: the test harness captures
            // `eprintln!` of a passing test, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: nats-server is not installed (apt-get install nats-server)"
            );
            return None;
        }
        Err(e) => panic!("cannot start nats-server: {e}"),
    };
    let url = ready(&mut child).await;
    Some(NatsServer { child, url, store })
}

/// Waits (at most 10 s) until `child` says it is ready; the URL it
/// listens on. Its log is drained from then on, so it never blocks on a
/// full pipe.
async fn ready(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut url = None;
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                url = Some(format!("nats://{}", addr.trim()));
            }
            let done = line.contains("Server is ready");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "nats-server did not get ready within 10 s; it printed:\n{}",
        seen.join("\n")
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    url.expect("nats-server did not say its port")
}

fn spawn(store: &std::path::Path, port: &str) -> std::io::Result<Child> {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

impl NatsServer {
    /// Kills it (SIGKILL), as an outage would; its store stays.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again on the same port and store, and waits until it is
    /// ready (at most 10 s).
    pub async fn restart(&mut self) {
        let port = self.url.rsplit(':').next().expect("a port").to_owned();
        let mut child = spawn(&self.store, &port).expect("nats-server starts again");
        assert_eq!(ready(&mut child).await, self.url, "back on the same port");
        self.child = child;
    }
}
