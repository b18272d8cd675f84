use super::*;

/// A fresh directory under the system temporary directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("randomness");
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("invitation-store-{tag}-{name}"));
        fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_owned(),
        durability: Durability::Write,
        fsync_interval: Duration::from_secs(1),
        snapshot_after_bytes: 1 << 20,
    }
}

fn entries(loaded: &Loaded) -> Vec<String> {
    loaded.decode_entries::<String>().expect("decodes")
}

fn write_entries(store: &mut Store, items: &[&str]) {
    for item in items {
        store.add(item);
    }
    store.commit().expect("commit");
}

#[test]
fn entries_survive_a_reopen_in_order() {
    let tmp = TempDir::new("reopen");
    {
        let (mut store, loaded) = Store::open(options(&tmp.0)).unwrap();
        assert!(loaded.snapshot.is_none());
        assert_eq!(loaded.entry_count(), 0);
        write_entries(&mut store, &["a", "b"]);
        write_entries(&mut store, &["c"]);
        assert_eq!(store.pending(), 0);
        assert!(store.bytes_written() > 0);
    }
    let (mut store, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(entries(&loaded), ["a", "b", "c"]);
    assert!(loaded.torn.is_empty());
    // Appending goes on after what was there.
    write_entries(&mut store, &["d"]);
    drop(store);
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(entries(&loaded), ["a", "b", "c", "d"]);
}

#[test]
fn a_second_server_cannot_open_a_locked_directory() {
    let tmp = TempDir::new("lock");
    let (_store, _) = Store::open(options(&tmp.0)).unwrap();
    match Store::open(options(&tmp.0)) {
        Err(e @ StoreError::Locked { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&tmp.0.display().to_string()), "{text}");
            assert!(text.contains("in use by another server"), "{text}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_the_prefix_kept() {
    let tmp = TempDir::new("torn");
    let path = {
        let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
        write_entries(&mut store, &["a", "b", "c"]);
        store.journal_path.clone()
    };
    let len = fs::metadata(&path).unwrap().len();
    // Cut the last entry ("c": 8 + 3 bytes) in the middle.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 4).unwrap();
    drop(f);
    let (mut store, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(entries(&loaded), ["a", "b"]);
    assert_eq!(loaded.torn, [(path.clone(), 7)]);
    // The tail is gone from the file; appends follow the prefix.
    write_entries(&mut store, &["d"]);
    drop(store);
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(entries(&loaded), ["a", "b", "d"]);
    assert!(loaded.torn.is_empty());
}

#[test]
fn a_corrupted_journal_stops_the_open_naming_the_file() {
    let tmp = TempDir::new("corrupt");
    let path = {
        let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
        write_entries(&mut store, &["first", "second", "third"]);
        store.journal_path.clone()
    };
    let mut bytes = fs::read(&path).unwrap();
    // A byte of "first" flips; whole entries follow it.
    let at = frame::HEADER_LEN + frame::FRAME_OVERHEAD + 2;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).unwrap();
    match Store::open(options(&tmp.0)) {
        Err(e @ StoreError::Damaged { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("damaged frame at byte 16"), "{text}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    // Nothing was changed: the file is as it was.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_foreign_file_stops_the_open_naming_the_file() {
    let tmp = TempDir::new("foreign");
    let path = tmp.0.join(name(Kind::Journal, 0));
    fs::write(&path, b"#!/bin/sh\necho this is not a journal\n").unwrap();
    match Store::open(options(&tmp.0)) {
        Err(e @ StoreError::Damaged { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("wrong header"), "{text}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
}

#[test]
fn an_entry_that_does_not_decode_names_file_and_offset() {
    let tmp = TempDir::new("decode");
    {
        let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
        store.add(&"fine");
        store.add(&42);
        store.commit().unwrap();
    }
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    let err = loaded.decode_entries::<String>().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("journal-00000000000000000000.log"), "{text}");
    assert!(
        text.contains("the entry at byte 30 does not decode"),
        "{text}"
    );
}

#[test]
fn a_snapshot_starts_a_generation_and_removes_the_older_one() {
    let tmp = TempDir::new("gen");
    {
        let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
        write_entries(&mut store, &["a", "b"]);
        store
            .snapshot(vec!["a".to_owned(), "b".to_owned()], false)
            .unwrap();
        write_entries(&mut store, &["c"]);
        store.finish().unwrap();
        assert_eq!(store.generation(), 1);
    }
    let mut files: Vec<String> = fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "journal-00000000000000000001.log",
            "lock",
            "snapshot-00000000000000000001.snap"
        ]
    );
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(
        loaded.decode_snapshot::<Vec<String>>().unwrap(),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(entries(&loaded), ["c"]);
}

/// A crash before the background snapshot landed: the older generation and
/// both journals are replayed.
#[test]
fn without_the_new_snapshot_both_journals_are_replayed() {
    let tmp = TempDir::new("midsnap");
    {
        let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
        write_entries(&mut store, &["a"]);
        store.snapshot("state", false).unwrap();
        write_entries(&mut store, &["b"]);
        store.finish().unwrap();
    }
    // As if the snapshot never reached its name; the old journal is back.
    fs::remove_file(tmp.0.join(name(Kind::Snapshot, 1))).unwrap();
    let mut old = frame::header(Kind::Journal).to_vec();
    frame::push_frame(&mut old, b"\"a\"");
    fs::write(tmp.0.join(name(Kind::Journal, 0)), old).unwrap();
    fs::write(
        tmp.0.join("snapshot-00000000000000000001.snap.tmp"),
        b"half",
    )
    .unwrap();
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert!(loaded.snapshot.is_none());
    assert_eq!(entries(&loaded), ["a", "b"]);
    assert!(
        !tmp.0
            .join("snapshot-00000000000000000001.snap.tmp")
            .exists(),
        "a leftover temporary snapshot is removed"
    );
}

/// A full disk: the write fails, the store says so and stops appending; a
/// snapshot taken once there is room again catches the disk up.
#[test]
fn a_failed_write_is_reported_and_a_later_snapshot_recovers() {
    let tmp = TempDir::new("full");
    let (mut store, _) = Store::open(options(&tmp.0)).unwrap();
    write_entries(&mut store, &["a"]);
    let fault = store.fail_writes();
    fault.store(true, Ordering::Relaxed);
    store.add(&"b");
    let err = store.commit().unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(store.failed());
    assert!(store.wants_snapshot());
    // Still full: the snapshot fails too, and is not retried at once.
    assert!(store.snapshot("state with b", true).is_err());
    assert!(store.failed());
    assert!(!store.wants_snapshot(), "retried at most once a second");
    // Room again.
    fault.store(false, Ordering::Relaxed);
    store.retry_at = None;
    assert!(store.wants_snapshot());
    store.snapshot("state with b", true).unwrap();
    assert!(!store.failed());
    write_entries(&mut store, &["c"]);
    drop(store);
    let (_, loaded) = Store::open(options(&tmp.0)).unwrap();
    assert_eq!(
        loaded.decode_snapshot::<String>().unwrap().as_deref(),
        Some("state with b")
    );
    assert_eq!(entries(&loaded), ["c"]);
}

#[test]
fn fsync_mode_writes_and_syncs_each_commit() {
    let tmp = TempDir::new("fsync");
    let mut opts = options(&tmp.0);
    opts.durability = Durability::Fsync;
    let (mut store, _) = Store::open(opts.clone()).unwrap();
    write_entries(&mut store, &["a"]);
    assert_eq!(store.sync_due(), None, "nothing left unsynced");
    drop(store);
    let (_, loaded) = Store::open(opts).unwrap();
    assert_eq!(entries(&loaded), ["a"]);
}

/// The journal must outgrow the last snapshot too before the next one:
/// copying a big state is paid for by as much traffic, however much is held.
#[test]
fn the_next_snapshot_waits_for_the_journal_to_outgrow_the_last() {
    let tmp = TempDir::new("budget");
    let mut opts = options(&tmp.0);
    opts.snapshot_after_bytes = 64;
    let (mut store, _) = Store::open(opts.clone()).unwrap();
    let big = "x".repeat(1000);
    store.snapshot(big.clone(), true).unwrap();
    // Past the configured budget, not past the 1 KB snapshot.
    for _ in 0..10 {
        store.add(&"0123456789");
    }
    store.commit().unwrap();
    assert!(store.journal_len > 64);
    assert!(!store.wants_snapshot());
    for _ in 0..100 {
        store.add(&"0123456789");
    }
    store.commit().unwrap();
    assert!(store.wants_snapshot());
    drop(store);
    // Known again after a restart, from the file.
    let (mut store, _) = Store::open(opts).unwrap();
    assert!(
        store.wants_snapshot(),
        "the journal there is bigger than the snapshot"
    );
    store.snapshot(big, true).unwrap();
    store.add(&"0123456789");
    store.commit().unwrap();
    assert!(!store.wants_snapshot());
}
