//! The `invitation-server` binary as an operator meets it: a generated
//! secret goes to an owner-only file and never to the terminal or the log
//! (text and JSON), `token` refuses a secret the server would refuse, and
//! misspelt `INVITATION_*` variables are named.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_invitation-server");
const SOON: Duration = Duration::from_secs(20);

/// A scratch directory of this test (removed at the end).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "invitation-binary-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// The binary with no `INVITATION_*` variables but `vars`.
fn command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("INVITATION_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    // Never the machine's own data directory (nor its kept secret).
    cmd.env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join(format!("invitation-binary-state-{}", std::process::id())),
    );
    cmd.envs(vars.iter().copied());
    cmd
}

/// Lines of a child's stdout and stderr, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Starts a server without a secret, waits until it says where the
/// secret is; returns the file's path and everything printed so far.
fn start_without_secret(
    runtime_dir: &Path,
    format: &str,
) -> (Child, mpsc::Receiver<String>, PathBuf, Vec<String>) {
    let mut child = command(&[("XDG_RUNTIME_DIR", runtime_dir.to_str().unwrap())])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            format,
            "--in-memory",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    let prefix = runtime_dir.join("invitation-server-");
    let path = loop {
        let line = rx
            .recv_timeout(SOON)
            .unwrap_or_else(|_| panic!("no secret file announced; saw {seen:#?}"));
        let found = line
            .split(|c: char| c.is_whitespace() || c == '"' || c == ')')
            .find(|w| w.starts_with(prefix.to_str().unwrap()) && w.ends_with(".secret"))
            .map(PathBuf::from);
        seen.push(line);
        if let Some(p) = found {
            break p;
        }
    };
    (child, rx, path, seen)
}

fn stop(mut child: Child, rx: mpsc::Receiver<String>, mut seen: Vec<String>) -> Vec<String> {
    child.kill().unwrap();
    child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    seen
}

#[test]
fn a_generated_secret_is_written_owner_only_and_never_printed() {
    for format in ["text", "json"] {
        let dir = scratch(format);
        let (child, rx, path, seen) = start_without_secret(&dir, format);
        let secret = std::fs::read_to_string(&path).unwrap();
        let secret = secret.trim();
        assert_eq!(secret.len(), 64, "{format}: 32 random bytes in hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{format}");
        }
        let seen = stop(child, rx, seen);
        assert!(
            seen.iter().all(|l| !l.contains(secret)),
            "{format}: the secret was printed: {seen:#?}"
        );
        if format == "json" {
            for line in seen.iter().filter(|l| !l.trim().is_empty()) {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "json mode prints JSON lines only: {line:?}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn token_refuses_a_secret_the_server_would_refuse() {
    let out = command(&[])
        .args(["token", "--secret", "short", "--user", "alice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no token minted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret") && err.contains("16"), "{err}");

    let ok = command(&[])
        .args(["token", "--secret", "0123456789abcdef", "--user", "alice"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).split('.').count(), 3);
}

#[test]
fn token_help_tells_the_truth_about_an_unset_secret() {
    let out = command(&[]).args(["token", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("`token` reads it from there"), "{help}");
    assert!(help.contains("owner-only file"), "{help}");
}

#[test]
fn unknown_invitation_variables_are_named() {
    let out = command(&[
        ("INVITATION_MAX_CONECTIONS", "5"),
        ("INVITATION_SECRET", "0123456789abcdef"),
    ])
    .args(["token", "--user", "alice"])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVITATION_MAX_CONECTIONS"), "{err}");
    assert!(!err.contains("INVITATION_SECRET"), "{err}");
}
