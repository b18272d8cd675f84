//! Call records on disk: every ended call, kept for a configurable
//! retention and readable per user, page by page.
//!
//! # Layout
//!
//! A directory of append-only segment files, one per UTC day of the calls'
//! end times: `records-YYYY-MM-DD.jsonl`. Each starts with the header line
//! `{"invitation_call_records":1}` (the format version), then one JSON
//! object per line: a [`CallRecord`] whose times are unix nanoseconds
//! (`invited_at`, `answered_at`, `ended_at`) and whose duration is
//! `duration_ns`. Nothing else may live in the directory.
//!
//! # Writing
//!
//! [`RecordStore::append`] writes a batch with one `write` per segment it
//! touches (one, except across midnight) and no `fsync`;
//! [`RecordStore::sync`] makes what was written durable. A record whose
//! call id is already stored is skipped, so replaying a journal tail after
//! a crash (which emits again the records of the calls it ends) stores
//! each call once: the call ids of the last [`RecordOptions::dedup_window`]
//! of end times are held in memory; an older record is checked against
//! its day's segment on disk (a slow path only a long replay takes).
//!
//! # Faults
//!
//! A last line without its newline (a crash mid-write) is cut off at
//! [`RecordStore::open`] with a warning. A foreign file in the directory,
//! a segment whose header is not this format's, or a line that is not a
//! record (before the last) is a [`RecordError`] naming the file. Start-up
//! reads every line of the segments within the dedup window and the head
//! and tail of the others; [`RecordStore::verify`] reads all of them,
//! [`RecordStore::list`] checks the lines it returns.
//!
//! # Retention
//!
//! Whole segments go: a day whose last instant is older than the
//! retention is deleted at open, by [`RecordStore::prune`], and whenever
//! an append starts a new day. Records of such a day are not written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invitation_core::{CallId, CallRecord, UserId};

/// A call record as stored: times in unix nanoseconds.
pub type StoredRecord = CallRecord<i64>;

/// The most records one [`RecordStore::list`] page returns.
pub const MAX_PAGE: usize = 1000;

/// The longest line a segment may hold (a record is a few KiB at most).
const MAX_LINE: usize = 1 << 20;

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;
const HEADER: &[u8] = b"{\"invitation_call_records\":1}\n";
const HEADER_KEY: &str = "invitation_call_records";
const VERSION: u64 = 1;

/// Why the record store failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Reading, writing, creating or deleting a file failed.
    #[error("call records: {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file in the records directory that is not a record segment (a
    /// name other than `records-YYYY-MM-DD.jsonl`, a directory, or a
    /// segment without the records header).
    #[error(
        "call records: {}: not a call-record segment (only records-YYYY-MM-DD.jsonl files \
         written by this server belong in the records directory)",
        path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// A segment written in a format version this server does not read.
    #[error(
        "call records: {}: format version {version}, this server reads version {VERSION}",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version its header names.
        version: u64,
    },
    /// A complete line of a segment is not a call record.
    #[error("call records: {}: line {line} is corrupted: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line number (1 is the header).
        line: usize,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A [`Cursor`] that no page of this store handed out.
    #[error("call records: invalid cursor {0:?}")]
    Cursor(String),
}

/// How a [`RecordStore`] keeps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordOptions {
    /// How long records are kept, counted from their end time (whole days
    /// go at once: a day is deleted once its last instant is this old).
    pub retention: Duration,
    /// End times this close to the newest stored one have their call ids
    /// in memory for the idempotence check (one hour by default; make it
    /// longer than the longest journal tail a recovery replays).
    pub dedup_window: Duration,
}

impl RecordOptions {
    /// Keep records for `retention`, with the default dedup window.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            dedup_window: Duration::from_secs(3600),
        }
    }
}

/// Where a page of [`RecordStore::list`] ended: pass it back for the next
/// page. Opaque; it survives a restart of the store (it is a string:
/// [`Cursor::as_str`], [`str::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    text: String,
    ended_at: i64,
    call_id: CallId,
}

impl Cursor {
    /// Where a page that ended with `record` goes on.
    pub(crate) fn after(record: &StoredRecord) -> Self {
        Self {
            text: format!("{}:{}", record.ended_at, record.call_id),
            ended_at: record.ended_at,
            call_id: record.call_id.clone(),
        }
    }

    /// The cursor as text (for a query string).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The last record a page held: its end time and call id.
    pub(crate) fn position(&self) -> (i64, &CallId) {
        (self.ended_at, &self.call_id)
    }

    fn key(&self) -> (i64, &CallId) {
        (self.ended_at, &self.call_id)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Cursor {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, RecordError> {
        let bad = || RecordError::Cursor(s.chars().take(64).collect());
        let (at, id) = s.split_once(':').ok_or_else(bad)?;
        let ended_at = at.parse().map_err(|_| bad())?;
        let call_id = CallId::new(id).map_err(|_| bad())?;
        Ok(Self {
            text: s.to_owned(),
            ended_at,
            call_id,
        })
    }
}

/// One page of [`RecordStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The records, by end time (then call id).
    pub records: Vec<StoredRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes known to be whole lines.
    len: u64,
}

/// The call-record store: see the [module docs](self).
#[derive(Debug)]
pub struct RecordStore {
    dir: PathBuf,
    options: RecordOptions,
    segments: BTreeMap<i64, Segment>,
    /// Call ids ended within the dedup window, and the same by end time
    /// (to forget them as the window moves).
    recent: HashSet<CallId>,
    recent_by_time: BTreeSet<(i64, CallId)>,
    /// The newest end time stored.
    newest: Option<i64>,
    /// Days whose last instant is before this are deleted, and records of
    /// those days not written (retention).
    horizon: i64,
    /// The segment last appended to, kept open.
    current: Option<(i64, File)>,
    /// The call ids of the older day last checked (see `older_ids`).
    older: Option<(i64, HashSet<CallId>)>,
    /// Segments written since the last sync; whether a file was created.
    dirty: BTreeSet<i64>,
    created: bool,
}

impl RecordStore {
    /// Opens (creating it if needed) the store in `dir`, keeping records
    /// for `retention`; prunes by the system clock.
    pub fn open(dir: impl Into<PathBuf>, retention: Duration) -> Result<Self, RecordError> {
        Self::open_with(dir, RecordOptions::new(retention), unix_now())
    }

    /// [`RecordStore::open`] with every option, pruning as of `now` (unix
    /// nanoseconds).
    pub fn open_with(
        dir: impl Into<PathBuf>,
        options: RecordOptions,
        now: i64,
    ) -> Result<Self, RecordError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_at(&path))?;
            let day = entry
                .file_name()
                .to_str()
                .and_then(day_of_name)
                .filter(|_| file_type.is_file())
                .ok_or_else(|| RecordError::Foreign { path: path.clone() })?;
            segments.insert(day, Segment { path, len: 0 });
        }
        for segment in segments.values_mut() {
            segment.len = check_segment(&segment.path)?;
        }
        let mut store = Self {
            dir,
            options,
            segments,
            recent: HashSet::new(),
            recent_by_time: BTreeSet::new(),
            newest: None,
            horizon: i64::MIN,
            current: None,
            older: None,
            dirty: BTreeSet::new(),
            created: false,
        };
        store.prune(now)?;
        store.load_recent()?;
        Ok(store)
    }

    /// Reads the call ids of the newest segments, back to the dedup
    /// window before the newest end time.
    fn load_recent(&mut self) -> Result<(), RecordError> {
        let window = duration_ns(self.options.dedup_window);
        for (day, segment) in self.segments.iter().rev() {
            if let Some(newest) = self.newest
                && (day + 1).saturating_mul(NS_PER_DAY) <= newest.saturating_sub(window)
            {
                break;
            }
            let (recent, by_time, newest) =
                (&mut self.recent, &mut self.recent_by_time, &mut self.newest);
            for_each_line(segment, |_, record| {
                let record = record?;
                let top = newest.map_or(record.ended_at, |n| n.max(record.ended_at));
                *newest = Some(top);
                by_time.insert((record.ended_at, record.call_id.clone()));
                recent.insert(record.call_id);
                // As it goes: a day's ids are never all held at once.
                forget_before(recent, by_time, top.saturating_sub(window));
                Ok(())
            })?;
        }
        Ok(())
    }

    fn forget_old_ids(&mut self) {
        let Some(newest) = self.newest else { return };
        let cutoff = newest.saturating_sub(duration_ns(self.options.dedup_window));
        forget_before(&mut self.recent, &mut self.recent_by_time, cutoff);
    }

    /// Appends `records` (times in unix nanoseconds), skipping those whose
    /// call id is already stored and those of a day past the retention. One
    /// write per segment touched, no `fsync` ([`RecordStore::sync`]).
    /// Returns how many were written.
    ///
    /// A failed write is rolled back to the last whole line before the
    /// error is returned, so the segment stays readable.
    pub fn append(&mut self, records: &[StoredRecord]) -> Result<usize, RecordError> {
        let window_start = self.newest.map_or(i64::MIN, |n| {
            n.saturating_sub(duration_ns(self.options.dedup_window))
        });
        let mut batch: HashSet<&CallId> = HashSet::new();
        let mut lines: BTreeMap<i64, (Vec<u8>, Vec<&StoredRecord>)> = BTreeMap::new();
        for record in records {
            let day = record.ended_at.div_euclid(NS_PER_DAY);
            if self.past_retention(day)
                || self.recent.contains(&record.call_id)
                || !batch.insert(&record.call_id)
            {
                continue;
            }
            if record.ended_at < window_start && self.older_ids(day)?.contains(&record.call_id) {
                continue;
            }
            let (buf, recs) = lines.entry(day).or_default();
            serde_json::to_writer(&mut *buf, record).expect("a record serializes");
            buf.push(b'\n');
            recs.push(record);
        }
        let new_day = lines.keys().next_back().is_some_and(|d| {
            self.segments
                .last_key_value()
                .is_none_or(|(last, _)| d > last)
        });
        let mut written = 0;
        for (day, (buf, recs)) in lines {
            self.write_segment(day, buf)?;
            // Known as stored as soon as written (a later day's failure
            // must not let a retry write these twice).
            for record in recs {
                self.note_stored(day, record);
                written += 1;
            }
        }
        self.forget_old_ids();
        if new_day && let Some(newest) = self.newest {
            self.prune(newest)?;
        }
        Ok(written)
    }

    /// A day whose last instant is past the retention horizon.
    fn past_retention(&self, day: i64) -> bool {
        (day + 1).saturating_mul(NS_PER_DAY) <= self.horizon
    }

    /// The call ids stored in `day`'s segment, for a record older than the
    /// dedup window: read from disk once and kept (one day at a time) while
    /// such records keep coming (a long replay, a clock set back).
    fn older_ids(&mut self, day: i64) -> Result<&HashSet<CallId>, RecordError> {
        if self.older.as_ref().is_none_or(|(d, _)| *d != day) {
            let ids = self.ids_of_day(day)?;
            self.older = Some((day, ids));
        }
        Ok(&self.older.as_ref().expect("loaded above").1)
    }

    fn note_stored(&mut self, day: i64, record: &StoredRecord) {
        self.newest = Some(
            self.newest
                .map_or(record.ended_at, |n| n.max(record.ended_at)),
        );
        self.recent_by_time
            .insert((record.ended_at, record.call_id.clone()));
        self.recent.insert(record.call_id.clone());
        if let Some((d, ids)) = &mut self.older
            && *d == day
        {
            ids.insert(record.call_id.clone());
        }
    }

    fn write_segment(&mut self, day: i64, mut buf: Vec<u8>) -> Result<(), RecordError> {
        if self.current.as_ref().is_none_or(|(d, _)| *d != day) {
            let path = self.dir.join(name_of_day(day));
            let created = !self.segments.contains_key(&day);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_at(&path))?;
            if created {
                self.segments.insert(day, Segment { path, len: 0 });
                self.created = true;
            }
            self.current = Some((day, file));
        }
        let segment = self.segments.get_mut(&day).expect("inserted above");
        if segment.len == 0 {
            buf.splice(0..0, HEADER.iter().copied());
        }
        let (_, file) = self.current.as_mut().expect("opened above");
        if let Err(e) = file.write_all(&buf) {
            // Leave no partial line behind: the next append would bury it.
            let _ = file.set_len(segment.len);
            self.current = None;
            return Err(RecordError::Io {
                path: segment.path.clone(),
                source: e,
            });
        }
        segment.len += buf.len() as u64;
        self.dirty.insert(day);
        Ok(())
    }

    /// The call ids stored in `day`'s segment.
    fn ids_of_day(&self, day: i64) -> Result<HashSet<CallId>, RecordError> {
        let mut ids = HashSet::new();
        if let Some(segment) = self.segments.get(&day) {
            for_each_line(segment, |_, record| {
                ids.insert(record?.call_id);
                Ok(())
            })?;
        }
        Ok(ids)
    }

    /// Makes every record appended so far durable (`fsync` of the segments
    /// written since the last sync, and of the directory when a segment
    /// was created).
    pub fn sync(&mut self) -> Result<(), RecordError> {
        for day in std::mem::take(&mut self.dirty) {
            let Some(segment) = self.segments.get(&day) else {
                continue;
            };
            match &self.current {
                Some((d, file)) if *d == day => file.sync_data(),
                _ => File::open(&segment.path).and_then(|f| f.sync_data()),
            }
            .map_err(io_at(&segment.path))?;
        }
        if std::mem::take(&mut self.created) {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_at(&self.dir))?;
        }
        Ok(())
    }

    /// Deletes the segments whose whole day ended more than the retention
    /// before `now` (unix nanoseconds); records of such days are no longer
    /// written. Returns how many segments went.
    pub fn prune(&mut self, now: i64) -> Result<usize, RecordError> {
        let horizon = now.saturating_sub(duration_ns(self.options.retention));
        self.horizon = self.horizon.max(horizon);
        let old: Vec<i64> = self
            .segments
            .keys()
            .copied()
            .take_while(|day| (day + 1).saturating_mul(NS_PER_DAY) <= horizon)
            .collect();
        for day in &old {
            let segment = self.segments.remove(day).expect("listed");
            if self.current.as_ref().is_some_and(|(d, _)| d == day) {
                self.current = None;
            }
            if self.older.as_ref().is_some_and(|(d, _)| d == day) {
                self.older = None;
            }
            self.dirty.remove(day);
            fs::remove_file(&segment.path).map_err(io_at(&segment.path))?;
            tracing::info!(path = %segment.path.display(), "call records: segment past retention deleted");
        }
        Ok(old.len())
    }

    /// The records `user` took part in (as caller or callee) that ended in
    /// `from..to` (unix nanoseconds), by end time then call id: at most
    /// `limit` (capped to [`MAX_PAGE`], at least 1) after `cursor`.
    ///
    /// Reads the day segments from the cursor's (or `from`'s) day on, until
    /// the page is full.
    pub fn list(
        &self,
        user: &UserId,
        from: i64,
        to: i64,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, RecordError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = cursor.map_or(from, |c| c.ended_at.max(from));
        // Only lines naming the user (as a JSON string) are parsed.
        let needle = serde_json::to_vec(user).expect("an id serializes");
        let mut out: Vec<StoredRecord> = Vec::new();
        if to <= start {
            return Ok(Page {
                records: out,
                next_cursor: None,
            });
        }
        let days = start.div_euclid(NS_PER_DAY)..=(to - 1).div_euclid(NS_PER_DAY);
        let sort = |v: &mut Vec<StoredRecord>| {
            v.sort_by(|a, b| (a.ended_at, &a.call_id).cmp(&(b.ended_at, &b.call_id)));
        };
        for segment in self.segments.range(days).map(|(_, s)| s) {
            // One more than the page, to know whether another follows.
            let wanted = limit + 1 - out.len();
            let mut found = Vec::new();
            for_each_raw_line(segment, |line_no, line| {
                if !contains(line, &needle) {
                    return Ok(());
                }
                let record = parse_line(segment, line_no, line)?;
                let after = cursor.is_none_or(|c| (record.ended_at, &record.call_id) > c.key());
                if after && (from..to).contains(&record.ended_at) && record.involves(user) {
                    found.push(record);
                    // Bounded: only the first `wanted` of a busy user's day
                    // can make the page.
                    if found.len() >= 2 * wanted {
                        sort(&mut found);
                        found.truncate(wanted);
                    }
                }
                Ok(())
            })?;
            sort(&mut found);
            found.truncate(wanted);
            out.extend(found);
            if out.len() > limit {
                break;
            }
        }
        let next_cursor = if out.len() > limit {
            out.truncate(limit);
            out.last().map(Cursor::after)
        } else {
            None
        };
        Ok(Page {
            records: out,
            next_cursor,
        })
    }

    /// Reads every line of every segment: how many records there are when
    /// all parse, else the first corrupted line's error.
    pub fn verify(&self) -> Result<usize, RecordError> {
        let mut n = 0;
        for segment in self.segments.values() {
            for_each_line(segment, |_, record| record.map(|_| n += 1))?;
        }
        Ok(n)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Forgets the call ids that ended before `cutoff`.
fn forget_before(recent: &mut HashSet<CallId>, by_time: &mut BTreeSet<(i64, CallId)>, cutoff: i64) {
    while by_time.first().is_some_and(|(at, _)| *at < cutoff) {
        let (_, id) = by_time.pop_first().expect("first exists");
        recent.remove(&id);
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_owned(),
        source,
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ns)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn parse_line(segment: &Segment, line_no: usize, line: &[u8]) -> Result<StoredRecord, RecordError> {
    serde_json::from_slice(line).map_err(|source| RecordError::Corrupt {
        path: segment.path.clone(),
        line: line_no,
        source,
    })
}

/// Calls `f` with each record line (after the header) of the segment's
/// whole lines, numbered from 2. Streams: holds one line at a time (a
/// line longer than [`MAX_LINE`] is corrupted).
fn for_each_raw_line(
    segment: &Segment,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let io = io_at(&segment.path);
    let file = File::open(&segment.path).map_err(io)?;
    let mut reader = BufReader::new(file.take(segment.len));
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io_at(&segment.path))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            return Err(RecordError::Corrupt {
                path: segment.path.clone(),
                line: n,
                source: serde::de::Error::custom(format_args!("longer than {MAX_LINE} bytes")),
            });
        }
        line.pop();
        if n > 1 && !line.is_empty() {
            f(n, &line)?;
        }
    }
}

/// [`for_each_raw_line`], parsed (`f` decides what a corrupted line does).
fn for_each_line(
    segment: &Segment,
    mut f: impl FnMut(usize, Result<StoredRecord, RecordError>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    for_each_raw_line(segment, |n, line| f(n, parse_line(segment, n, line)))
}

/// Checks a segment's header and cuts off a torn last line; returns the
/// length of its whole lines.
fn check_segment(path: &Path) -> Result<u64, RecordError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    let mut head = vec![0; usize::try_from(len.min(256)).unwrap_or(256)];
    file.read_exact(&mut head).map_err(io_at(path))?;
    let keep = if head.starts_with(HEADER) {
        last_line_end(&mut file, len).map_err(io_at(path))?
    } else if head.len() < HEADER.len() && HEADER.starts_with(&head) {
        // A segment torn while its header was written.
        0
    } else {
        return Err(header_error(path, &head));
    };
    if keep < len {
        tracing::warn!(
            path = %path.display(),
            kept = keep,
            dropped = len - keep,
            "call records: torn last line cut off"
        );
        file.set_len(keep).map_err(io_at(path))?;
    }
    Ok(keep)
}

/// A header line that is not this format's: a newer version, or foreign.
fn header_error(path: &Path, head: &[u8]) -> RecordError {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let version = serde_json::from_slice::<BTreeMap<String, u64>>(line)
        .ok()
        .and_then(|m| m.get(HEADER_KEY).copied());
    match version {
        Some(version) if version != VERSION => RecordError::Version {
            path: path.to_owned(),
            version,
        },
        _ => RecordError::Foreign {
            path: path.to_owned(),
        },
    }
}

/// The offset just past the last newline (the header's at least).
fn last_line_end(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        file.seek(SeekFrom::Start(start))?;
        buf.clear();
        (&mut *file).take(end - start).read_to_end(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// `records-YYYY-MM-DD.jsonl` for a day number (days since 1970-01-01).
fn name_of_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("records-{y:04}-{m:02}-{d:02}.jsonl")
}

/// The day of a segment name, if it is one (an exact, valid date).
fn day_of_name(name: &str) -> Option<i64> {
    let date = name.strip_prefix("records-")?.strip_suffix(".jsonl")?;
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(&date[..4])?, num(&date[5..7])?, num(&date[8..])?);
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based
/// years, 400-year eras of 146,097 days).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use invitation_core::{CallType, DeviceId, Reason};

    use super::*;

    /// The call ids held in memory for the idempotence check cover the
    /// dedup window only, however many records are stored.
    #[test]
    fn the_ids_in_memory_cover_the_window_only() {
        let dir =
            std::env::temp_dir().join(format!("invitation-records-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let t = 20_789 * NS_PER_DAY;
        let mut store = RecordStore::open_with(
            &dir,
            RecordOptions::new(Duration::from_secs(86_400 * 30)),
            t,
        )
        .unwrap();
        let minute = 60 * 1_000_000_000;
        let records: Vec<StoredRecord> = (0..180)
            .map(|i| {
                CallRecord::new(
                    CallId::new(format!("c-{i}")).unwrap(),
                    UserId::new("alice").unwrap(),
                    DeviceId::new("phone").unwrap(),
                    CallType::Voice,
                    t + i * minute,
                    t + i * minute,
                    Reason::Timeout,
                )
            })
            .collect();
        for batch in records.chunks(10) {
            store.append(batch).unwrap();
        }
        // Minutes 119 to 179: the last hour, both ends included.
        assert_eq!(store.recent.len(), 61);
        assert_eq!(store.recent_by_time.len(), 61);
        assert!(store.recent.contains(&CallId::new("c-119").unwrap()));
        assert!(!store.recent.contains(&CallId::new("c-118").unwrap()));
        drop(store);
        let store = RecordStore::open_with(
            &dir,
            RecordOptions::new(Duration::from_secs(86_400 * 30)),
            t,
        )
        .unwrap();
        assert_eq!(store.recent.len(), 61);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn day_names_are_utc_dates() {
        for (day, name) in [
            (0, "records-1970-01-01.jsonl"),
            (11_017, "records-2000-03-01.jsonl"),
            (19_782, "records-2024-02-29.jsonl"),
            (20_789, "records-2026-12-02.jsonl"),
            (-106_751, "records-1677-09-22.jsonl"),
            (106_751, "records-2262-04-11.jsonl"),
        ] {
            assert_eq!(name_of_day(day), name);
            assert_eq!(day_of_name(name), Some(day), "{name}");
        }
        // Every i64 nanosecond time has a four-digit year.
        assert_eq!(
            name_of_day(i64::MIN.div_euclid(NS_PER_DAY)),
            "records-1677-09-21.jsonl"
        );
        assert_eq!(
            name_of_day(i64::MAX.div_euclid(NS_PER_DAY)),
            "records-2262-04-11.jsonl"
        );
        for bad in [
            "records-2023-02-29.jsonl",
            "records-2024-13-01.jsonl",
            "records-2024-1-01.jsonl",
            "records-+024-01-01.jsonl",
            "records-2024-01-01.json",
            "notes.txt",
        ] {
            assert_eq!(day_of_name(bad), None, "{bad}");
        }
    }
}
