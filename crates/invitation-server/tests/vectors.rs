//! Plays every conformance vector under tests/vectors/ (recursively)
//! against the real server over WebSocket on 127.0.0.1:0. A vector file
//! added there runs with no code change. The format is documented in
//! docs/protocol.md, "Conformance vectors". `VECTOR=<part of a path>`
//! plays only the matching files.

mod vector;

use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_vector_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let only = std::env::var("VECTOR").ok();
    let files: Vec<_> = vector::find(&dir)
        .into_iter()
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.to_string_lossy().contains(o))
        })
        .collect();
    assert!(
        if only.is_some() {
            !files.is_empty()
        } else {
            files.len() >= 20
        },
        "only {} vectors found under {}",
        files.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for path in &files {
        let shown = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let result = match vector::load(path) {
            Ok(v) => {
                let name = v.name().to_owned();
                if let Some(other) = names.insert(name.clone(), shown.clone()) {
                    failures.push(format!("{shown}: name {name:?} is also used by {other}"));
                }
                v.play()
                    .await
                    .map_err(|e| format!("vector {name:?} ({shown}): {e}"))
            }
            Err(e) => Err(format!("{shown}: {e}")),
        };
        match result {
            Ok(()) => println!("passed {shown}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
