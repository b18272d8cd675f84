//! docs/events.md shows tests/handler.rs and this crate's tokio line
//! verbatim: what the docs say is what was compiled and run.

const DOC: &str = include_str!("../../../docs/events.md");

#[test]
fn the_documented_test_is_this_crates_test() {
    let file = include_str!("handler.rs");
    assert!(
        DOC.contains(file),
        "docs/events.md no longer shows crates/app-handler-test/tests/handler.rs verbatim"
    );
}

#[test]
fn the_documented_dependencies_are_this_crates() {
    let manifest = include_str!("../Cargo.toml");
    for line in manifest.lines().filter(|l| l.starts_with("tokio")) {
        assert!(DOC.contains(line), "docs/events.md lacks {line:?}");
    }
}
