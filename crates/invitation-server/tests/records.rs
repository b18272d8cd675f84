//! The call-record store: round trip through a restart, pagination,
//! retention, a torn tail, corrupted and foreign files, idempotence by
//! call id. Each test works in its own directory under the system temp dir.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invitation_core::protocol::{Command, InviteRequest};
use invitation_core::{
    CallId, CallRecord, CallType, CalleeRecord, ConnId, CustomData, DeviceId, Reason, RequestId,
    SequentialCallIds, Switchboard, SwitchboardConfig, User, UserId,
};
use invitation_server::records::MAX_PAGE;
use invitation_server::{Cursor, Page, RecordError, RecordOptions, RecordStore, StoredRecord};
use serde_json::json;

const SEC: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * SEC;
/// 2026-12-02 00:00:00 UTC.
const T: i64 = 20_789 * DAY;
const SEGMENT: &str = "records-2026-12-02.jsonl";

/// A fresh directory, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "invitation-records-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The file names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn cid(s: &str) -> CallId {
    CallId::new(s).unwrap()
}

/// A call that rang 30 s and timed out at `ended_at`.
fn rec(id: &str, caller: &str, callees: &[&str], ended_at: i64) -> StoredRecord {
    let mut r = CallRecord::new(
        cid(id),
        uid(caller),
        did("phone"),
        CallType::Voice,
        ended_at - 30 * SEC,
        ended_at,
        Reason::Timeout,
    );
    r.callees = callees
        .iter()
        .map(|c| CalleeRecord::new(uid(c), Reason::Timeout))
        .collect();
    r
}

fn options(retention_days: u64) -> RecordOptions {
    RecordOptions::new(Duration::from_secs(retention_days * 86_400))
}

fn open(dir: &TempDir, now: i64) -> RecordStore {
    RecordStore::open_with(dir.path(), options(30), now).unwrap()
}

fn all(store: &RecordStore, user: &str) -> Vec<StoredRecord> {
    let page = store
        .list(&uid(user), i64::MIN, i64::MAX, None, MAX_PAGE)
        .unwrap();
    assert_eq!(page.next_cursor, None);
    page.records
}

fn ids(records: &[StoredRecord]) -> Vec<String> {
    records.iter().map(|r| r.call_id.to_string()).collect()
}

/// A record made by a real switchboard (an answered, hung-up call), with
/// its instants mapped to unix nanoseconds as the server does.
fn real_record(t0_unix: i64) -> StoredRecord {
    let mut config = SwitchboardConfig::default();
    config.call_records = true;
    let mut sb = Switchboard::new(config, SequentialCallIds::default());
    let t0 = Instant::now();
    let (a, b) = (ConnId::new(1), ConnId::new(2));
    sb.connect(
        t0,
        a,
        User::named("alice", "Alice"),
        did("phone"),
        None,
        None,
    );
    sb.connect(t0, b, User::named("bob", "Bob"), did("tablet"), None, None);
    let invite = InviteRequest::new(vec![uid("bob")], CallType::Video)
        .with_custom_data(Some(CustomData::new("{\"room\":1}").unwrap()));
    let id = |s: &str| RequestId::new(s).unwrap();
    let call = match sb.handle_command(t0, a, id("1"), Command::Invite(invite)) {
        Ok(invitation_core::protocol::ReplyResult::Invited { call_id, .. }) => call_id,
        other => panic!("{other:?}"),
    };
    let at = |s: u64| t0 + Duration::from_secs(s);
    sb.handle_command(at(4), b, id("2"), Command::accept(call.clone()))
        .unwrap();
    sb.handle_command(at(64), a, id("3"), Command::hang_up(call))
        .unwrap();
    let record = sb.poll_record().expect("the hang-up ended the call");
    assert_eq!(sb.poll_record(), None);
    record.map_times(|t| t0_unix + i64::try_from((t - t0).as_nanos()).unwrap())
}

#[test]
fn records_round_trip_through_a_restart() {
    let dir = TempDir::new("round-trip");
    let mut store = open(&dir, T);
    let real = real_record(T + 3600 * SEC);
    let mut full = rec("c-2", "carol", &["alice", "dan"], T + 7200 * SEC);
    full.callees[0].outcome = Reason::Accepted;
    full.callees[0].device = Some(did("laptop"));
    full.callees[1].added = true;
    full.answered_at = Some(T + 7000 * SEC);
    full.duration = Duration::from_secs(200);
    full.reason = Reason::HungUp;
    assert_eq!(store.append(&[real.clone(), full.clone()]).unwrap(), 2);
    store.sync().unwrap();
    assert_eq!(all(&store, "alice"), [real.clone(), full.clone()]);
    assert_eq!(all(&store, "bob"), std::slice::from_ref(&real));
    assert_eq!(all(&store, "dan"), [full.clone()]);
    assert_eq!(all(&store, "erin"), []);
    drop(store);

    // On disk: one segment for the day, the header, one line per record.
    assert_eq!(dir.names(), [SEGMENT]);
    let text = fs::read_to_string(dir.file(SEGMENT)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "{\"invitation_call_records\":1}");
    let first: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        first,
        json!({"call_id": real.call_id.to_string(), "caller": "alice", "caller_device": "phone",
            "call_type": "video", "custom_data": "{\"room\":1}",
            "callees": [{"user": "bob", "outcome": "accepted", "device": "tablet"}],
            "invited_at": T + 3600 * SEC, "answered_at": T + 3604 * SEC,
            "ended_at": T + 3664 * SEC, "duration_ns": 60 * SEC, "reason": "hung_up"})
    );
    assert_eq!(lines.len(), 3);

    let store = open(&dir, T);
    assert_eq!(all(&store, "alice"), [real, full]);
    assert_eq!(store.verify().unwrap(), 2);
}

#[test]
fn pages_cover_every_record_once_in_end_time_order() {
    let dir = TempDir::new("pages");
    let mut store = open(&dir, T);
    let mut records = Vec::new();
    // Three days; ties on the end time; alice as caller, as callee, or
    // not at all.
    for i in 0..40i64 {
        let ended = T + (i / 3) * (DAY / 5) + (i % 2) * SEC;
        let r = match i % 4 {
            0 => rec(&format!("c-{i:02}"), "alice", &["bob"], ended),
            1 => rec(&format!("c-{i:02}"), "bob", &["carol", "alice"], ended),
            2 => rec(&format!("c-{i:02}"), "bob", &["carol"], ended),
            _ => rec(&format!("x-{i:02}"), "dan", &["alice"], ended),
        };
        records.push(r);
    }
    // Appended out of order, in several batches.
    records.reverse();
    for batch in records.chunks(7) {
        store.append(batch).unwrap();
    }
    assert_eq!(dir.names().len(), 3);
    let mut expected: Vec<StoredRecord> = records
        .iter()
        .filter(|r| r.involves(&uid("alice")))
        .cloned()
        .collect();
    expected.sort_by(|a, b| (a.ended_at, &a.call_id).cmp(&(b.ended_at, &b.call_id)));
    assert_eq!(expected.len(), 30);

    for limit in [1, 3, 7, 29, 30, 100] {
        let mut got = Vec::new();
        let mut cursor: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            let Page {
                records,
                next_cursor,
                ..
            } = store
                .list(&uid("alice"), i64::MIN, i64::MAX, cursor.as_ref(), limit)
                .unwrap();
            pages += 1;
            assert!(records.len() <= limit);
            got.extend(records.clone());
            match next_cursor {
                Some(c) => {
                    assert_eq!(records.len(), limit, "only the last page is short");
                    // The cursor survives being sent as text.
                    cursor = Some(c.as_str().parse().unwrap());
                }
                None => break,
            }
            assert!(pages <= 31, "no end");
        }
        assert_eq!(ids(&got), ids(&expected), "limit {limit}");
        assert_eq!(pages, expected.len().div_ceil(limit), "limit {limit}");
    }

    // A time window: from inclusive, to exclusive.
    let (from, to) = (T + DAY / 5, T + DAY);
    let page = store.list(&uid("alice"), from, to, None, 100).unwrap();
    let window: Vec<_> = expected
        .iter()
        .filter(|r| r.ended_at >= from && r.ended_at < to)
        .cloned()
        .collect();
    assert!(!window.is_empty() && window.len() < expected.len());
    assert_eq!(page.records, window);
    assert_eq!(
        store
            .list(&uid("alice"), to, from, None, 9)
            .unwrap()
            .records,
        []
    );

    // A limit of 0 is 1.
    let page = store
        .list(&uid("alice"), i64::MIN, i64::MAX, None, 0)
        .unwrap();
    assert_eq!(page.records, expected[..1]);
    assert!(page.next_cursor.is_some());
}

#[test]
fn a_page_holds_at_most_max_page_records() {
    let dir = TempDir::new("cap");
    let mut store = open(&dir, T);
    let records: Vec<_> = (0..MAX_PAGE as i64 + 1)
        .map(|i| rec(&format!("c-{i:05}"), "alice", &["bob"], T + i * SEC))
        .collect();
    assert_eq!(store.append(&records).unwrap(), MAX_PAGE + 1);
    let page = store
        .list(&uid("bob"), i64::MIN, i64::MAX, None, usize::MAX)
        .unwrap();
    assert_eq!(page.records.len(), MAX_PAGE);
    assert_eq!(page.records[..], records[..MAX_PAGE]);
    let next = page.next_cursor.expect("one more");
    let page = store
        .list(&uid("bob"), i64::MIN, i64::MAX, Some(&next), usize::MAX)
        .unwrap();
    assert_eq!(page.records, records[MAX_PAGE..]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn bad_cursors_are_typed_errors() {
    for bad in ["", "garbage", "12", "x:c-1", "12:", "12:has space"] {
        match bad.parse::<Cursor>() {
            Err(RecordError::Cursor(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn whole_days_past_retention_are_deleted() {
    let dir = TempDir::new("retention");
    let mut store = RecordStore::open_with(dir.path(), options(2), T).unwrap();
    let old = rec("c-old", "alice", &["bob"], T - 5 * DAY);
    let yesterday = rec("c-y", "alice", &["bob"], T - DAY + 10 * SEC);
    let today = rec("c-t", "alice", &["bob"], T + 10 * SEC);
    // Older than the retention already: not written.
    assert_eq!(
        store
            .append(&[old, yesterday.clone(), today.clone()])
            .unwrap(),
        2
    );
    assert_eq!(
        dir.names(),
        ["records-2026-12-01.jsonl", "records-2026-12-02.jsonl"]
    );

    // Yesterday's last instant is 2 days old 2 days after midnight.
    assert_eq!(store.prune(T + 2 * DAY - 1).unwrap(), 0);
    assert_eq!(store.prune(T + 2 * DAY).unwrap(), 1);
    assert_eq!(dir.names(), [SEGMENT]);
    assert_eq!(all(&store, "alice"), std::slice::from_ref(&today));

    // Starting a new day prunes by the newest end time.
    let later = rec("c-l", "alice", &["bob"], T + 3 * DAY + 5 * SEC);
    assert_eq!(store.append(std::slice::from_ref(&later)).unwrap(), 1);
    assert_eq!(dir.names(), ["records-2026-12-05.jsonl"]);
    assert_eq!(all(&store, "alice"), [later]);
    drop(store);

    // And so does opening.
    let store = RecordStore::open_with(dir.path(), options(2), T + 7 * DAY).unwrap();
    assert_eq!(dir.names(), Vec::<String>::new());
    assert_eq!(all(&store, "alice"), []);
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with the log captured; returns what it logged.
fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (r, text)
}

#[test]
fn a_torn_last_line_is_cut_off_with_a_warning() {
    let dir = TempDir::new("torn");
    let mut store = open(&dir, T);
    let records: Vec<_> = (0..3)
        .map(|i| rec(&format!("c-{i}"), "alice", &["bob"], T + i * SEC))
        .collect();
    store.append(&records).unwrap();
    store.sync().unwrap();
    drop(store);
    let path = dir.file(SEGMENT);
    let whole = fs::metadata(&path).unwrap().len();
    let fourth = rec("c-3", "alice", &["bob"], T + 3 * SEC);
    let line = serde_json::to_string(&fourth).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&line.as_bytes()[..line.len() / 2])
        .unwrap();

    let (store, log) = logged(|| open(&dir, T));
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("torn last line cut off"), "{log}");
    assert!(log.contains(SEGMENT), "the warning names the file: {log}");
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    assert_eq!(all(&store, "alice"), records);

    // Appending goes on after the whole lines.
    let mut store = store;
    assert_eq!(store.append(std::slice::from_ref(&fourth)).unwrap(), 1);
    drop(store);
    let (store, log) = logged(|| open(&dir, T));
    assert_eq!(log, "", "nothing torn any more");
    assert_eq!(store.verify().unwrap(), 4);
    assert_eq!(all(&store, "bob").last(), Some(&fourth));
}

#[test]
fn a_segment_torn_inside_its_header_starts_over() {
    let dir = TempDir::new("torn-header");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.file(SEGMENT), "{\"invitation_ca").unwrap();
    let (store, log) = logged(|| open(&dir, T));
    assert!(log.contains("torn last line cut off"), "{log}");
    assert_eq!(fs::metadata(dir.file(SEGMENT)).unwrap().len(), 0);
    let mut store = store;
    let r = rec("c-1", "alice", &["bob"], T);
    assert_eq!(store.append(std::slice::from_ref(&r)).unwrap(), 1);
    drop(store);
    let store = open(&dir, T);
    assert_eq!(all(&store, "alice"), [r]);
}

#[test]
fn a_corrupted_line_is_an_error_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let mut store = open(&dir, T);
    let records: Vec<_> = (0..3)
        .map(|i| rec(&format!("c-{i}"), "alice", &["bob"], T + i * SEC))
        .collect();
    store.append(&records).unwrap();
    drop(store);
    let path = dir.file(SEGMENT);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replace("\"caller\"", "\"calle");
    fs::write(&path, lines.join("\n") + "\n").unwrap();

    let err = RecordStore::open_with(dir.path(), options(30), T).unwrap_err();
    assert!(
        matches!(&err, RecordError::Corrupt { path: p, line: 3, .. } if *p == path),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("line 3 is corrupted"), "{text}");
}

#[test]
fn an_old_corrupted_segment_is_found_by_verify_and_list() {
    let dir = TempDir::new("corrupt-old");
    let mut store = open(&dir, T);
    let old = rec("c-old", "alice", &["bob"], T - 10 * DAY);
    let new = rec("c-new", "alice", &["bob"], T);
    store.append(&[old, new.clone()]).unwrap();
    drop(store);
    let path = dir.file("records-2026-11-22.jsonl");
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"call_id\":\"c-x\",\"caller\":\"alice\"}\n")
        .unwrap();

    // Outside the dedup window: not read at start-up; found by `verify`,
    // and by `list` when it reads that day.
    let store = open(&dir, T);
    assert_eq!(
        store
            .list(&uid("alice"), T, i64::MAX, None, 10)
            .unwrap()
            .records,
        [new]
    );
    let errors = [
        store.verify().unwrap_err(),
        store
            .list(&uid("alice"), i64::MIN, i64::MAX, None, 10)
            .unwrap_err(),
    ];
    for err in errors {
        assert!(
            matches!(&err, RecordError::Corrupt { path: p, line: 3, .. } if *p == path),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("records-2026-11-22.jsonl"),
            "{err}"
        );
    }
}

#[test]
fn foreign_files_are_errors_naming_them() {
    let cases: [(&str, &[u8], &str); 4] = [
        ("notes.txt", b"hello\n", "not a call-record segment"),
        (SEGMENT, b"hello\nworld\n", "not a call-record segment"),
        (SEGMENT, b"\x00\x01\x02", "not a call-record segment"),
        (
            SEGMENT,
            b"{\"invitation_call_records\":2}\n{}\n",
            "format version 2, this server reads version 1",
        ),
    ];
    for (name, content, says) in cases {
        let dir = TempDir::new("foreign");
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(dir.file(name), content).unwrap();
        let err = RecordStore::open_with(dir.path(), options(30), T).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&dir.file(name).display().to_string()),
            "{text}"
        );
        assert!(text.contains(says), "{text}");
        // Nothing was cut or deleted.
        assert_eq!(fs::read(dir.file(name)).unwrap(), content);
    }
    let dir = TempDir::new("foreign-dir");
    fs::create_dir_all(dir.file(SEGMENT)).unwrap();
    let err = RecordStore::open_with(dir.path(), options(30), T).unwrap_err();
    assert!(matches!(err, RecordError::Foreign { .. }), "{err:?}");
}

#[test]
fn appending_a_stored_call_again_is_a_no_op() {
    let dir = TempDir::new("idempotent");
    let mut store = open(&dir, T);
    let r = |id: &str, s: i64| rec(id, "alice", &["bob"], T + s * SEC);
    assert_eq!(store.append(&[r("a", 1), r("b", 2), r("c", 3)]).unwrap(), 3);
    assert_eq!(store.append(&[r("b", 2), r("c", 3), r("d", 4)]).unwrap(), 1);
    assert_eq!(store.append(&[r("e", 5), r("e", 5)]).unwrap(), 1);
    assert_eq!(ids(&all(&store, "alice")), ["a", "b", "c", "d", "e"]);
    drop(store);

    // After a restart (a replay re-emits the records of the journal tail).
    let mut store = open(&dir, T);
    let replay: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .zip(1..)
        .map(|(id, s)| r(id, s))
        .collect();
    assert_eq!(store.append(&replay).unwrap(), 0);
    assert_eq!(store.append(&[r("f", 6)]).unwrap(), 1);
    assert_eq!(ids(&all(&store, "alice")), ["a", "b", "c", "d", "e", "f"]);

    // Older than the in-memory window (an hour before the newest): checked
    // against its day's segment on disk.
    assert_eq!(store.append(&[r("late", 7200)]).unwrap(), 1);
    assert_eq!(store.append(&[r("a", 1), r("old-new", 1)]).unwrap(), 1);
    assert_eq!(store.append(&[r("old-new", 1)]).unwrap(), 0);
    drop(store);
    let mut store = open(&dir, T);
    assert_eq!(store.append(&[r("a", 1), r("b", 2)]).unwrap(), 0);
    assert_eq!(
        ids(&all(&store, "alice")),
        ["a", "old-new", "b", "c", "d", "e", "f", "late"]
    );
    assert_eq!(store.verify().unwrap(), 8);
}
