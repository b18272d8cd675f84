//! The data directory: a journal of the switchboard's inputs and snapshots
//! of its whole state, so that a restart or a crash loses no call.
//!
//! ```text
//! <data dir>/
//!   lock                              held (flock) while a server runs on it
//!   snapshot-00000000000000000007.snap   the state when journal 7 began
//!   journal-00000000000000000007.log     every input since, in order
//!   journal-00000000000000000008.log     (a newer one, while snapshot 8 is written)
//! ```
//!
//! Generation `n`'s snapshot is the state at the start of journal `n`.
//! Recovery takes the newest complete snapshot and replays every journal of
//! that generation or later. A new generation starts when the current
//! journal outgrows its budget: the hub opens the next journal at once and
//! a background thread writes the snapshot (to a temporary name, synced,
//! then renamed), after which older files are removed. A crash at any point
//! leaves either the old snapshot with every journal after it, or the new
//! one.
//!
//! Writes are group-committed: the hub encodes the inputs of one turn (up to
//! 64 messages and the timers due) and writes them with one `write(2)`
//! before it releases that turn's outputs. [`Durability`] says when the
//! bytes reach the disk itself.

mod frame;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use frame::Kind;

/// When journal writes reach the disk (setting `durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each turn's inputs are handed to the operating system (`write(2)`)
    /// before its outputs are released, and synced to the disk at least
    /// every `fsync_interval_ms`. A crash of the process (kill -9, an
    /// out-of-memory kill, a panic) loses nothing; a power cut or kernel
    /// crash can lose the last interval.
    #[default]
    Write,
    /// Each turn's inputs are synced (`fdatasync`) before its outputs are
    /// released: nothing a client was told is lost even by a power cut, at
    /// the price of one disk flush per turn.
    Fsync,
}

/// Where and how the store keeps its files.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory (made if missing).
    pub dir: PathBuf,
    /// When writes reach the disk.
    pub durability: Durability,
    /// Longest time written data waits for a sync in [`Durability::Write`].
    pub fsync_interval: Duration,
    /// Start a new generation (write a snapshot) once the journal is this
    /// long: bounds both the disk used and the replay at start-up.
    pub snapshot_after_bytes: u64,
}

/// A failure of the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the directory's lock.
    #[error(
        "data directory {dir} is in use by another server (its lock file {lock} is held); \
         stop that server or choose another data_dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// A file cannot be used: not ours, a newer format, or damaged where a
    /// crash cannot have damaged it. The server does not start rather than
    /// guess.
    #[error(
        "{path}: {detail}; the server will not start on it (restore it from a backup, or move it away to start empty)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The operating system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One journal file's entries: the file and each payload with its byte
/// offset (for error messages).
pub type JournalFile = (PathBuf, Vec<(u64, Vec<u8>)>);

/// What [`Store::open`] found on disk, still encoded.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest snapshot's file and payload.
    pub snapshot: Option<(PathBuf, Vec<u8>)>,
    /// Every journal to replay after it, oldest first: file and payloads
    /// with their byte offsets.
    pub journals: Vec<JournalFile>,
    /// Torn tails cut off (file, bytes dropped).
    pub torn: Vec<(PathBuf, u64)>,
}

impl Loaded {
    /// The snapshot, decoded.
    pub fn decode_snapshot<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        self.snapshot
            .as_ref()
            .map(|(path, bytes)| {
                serde_json::from_slice(bytes).map_err(|e| StoreError::Damaged {
                    path: path.clone(),
                    detail: format!("the snapshot does not decode: {e}"),
                })
            })
            .transpose()
    }

    /// Every journal entry, decoded, oldest first.
    pub fn decode_entries<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(self.journals.iter().map(|(_, p)| p.len()).sum());
        for (path, payloads) in &self.journals {
            for (offset, bytes) in payloads {
                out.push(
                    serde_json::from_slice(bytes).map_err(|e| StoreError::Damaged {
                        path: path.clone(),
                        detail: format!("the entry at byte {offset} does not decode: {e}"),
                    })?,
                );
            }
        }
        Ok(out)
    }

    /// How many journal entries there are.
    pub fn entry_count(&self) -> usize {
        self.journals.iter().map(|(_, p)| p.len()).sum()
    }
}

/// The open data directory: the lock, the journal being appended to, the
/// snapshot being written.
pub struct Store {
    options: StoreOptions,
    _lock: File,
    generation: u64,
    journal: File,
    journal_path: PathBuf,
    journal_len: u64,
    /// Frames of the turn being built.
    batch: Vec<u8>,
    /// Entries in `batch`.
    batch_entries: usize,
    /// Written but not yet synced, since then.
    unsynced_since: Option<Instant>,
    /// The snapshot being written in the background.
    snapshot_job: Option<JoinHandle<Result<u64, StoreError>>>,
    /// Bytes of the newest snapshot on disk: the journal must outgrow it
    /// too before the next one (see [`Store::wants_snapshot`]).
    last_snapshot_bytes: u64,
    /// Bytes appended to journals since start (for the metrics).
    written: u64,
    /// A write failed (the disk is full?): nothing is appended until a
    /// snapshot succeeds again.
    failed: bool,
    /// No snapshot is tried before then (one failed).
    retry_at: Option<Instant>,
    /// Tests make every write fail with "no space left on device".
    fault: Arc<AtomicBool>,
}

/// How long after a failed snapshot the next is tried.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// "No space left on device".
const ENOSPC: i32 = 28;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.options.dir)
            .field("generation", &self.generation)
            .field("journal_len", &self.journal_len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn name(kind: Kind, generation: u64) -> String {
    match kind {
        Kind::Journal => format!("journal-{generation:020}.log"),
        Kind::Snapshot => format!("snapshot-{generation:020}.snap"),
    }
}

/// The kind and generation a file name announces, if it is one of ours.
fn parse_name(file: &str) -> Option<(Kind, u64)> {
    let (kind, rest) = if let Some(rest) = file.strip_prefix("journal-") {
        (Kind::Journal, rest.strip_suffix(".log")?)
    } else {
        (
            Kind::Snapshot,
            file.strip_prefix("snapshot-")?.strip_suffix(".snap")?,
        )
    };
    (rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| rest.parse().ok().map(|g| (kind, g)))
        .flatten()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

fn damaged(path: &Path, bad: &frame::BadFile) -> StoreError {
    StoreError::Damaged {
        path: path.to_owned(),
        detail: bad.to_string(),
    }
}

impl Store {
    /// Opens (or makes) the data directory, takes its lock, reads the newest
    /// snapshot and the journals after it, cuts a torn tail off the last
    /// journal (reported in [`Loaded::torn`]), and gets ready to append.
    pub fn open(options: StoreOptions) -> Result<(Self, Loaded), StoreError> {
        let dir = options.dir.clone();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir,
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(&lock_path)(e)),
        }

        let mut snapshots = Vec::new();
        let mut journals = Vec::new();
        for item in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let item = item.map_err(StoreError::io(&dir))?;
            let file_name = item.file_name();
            let Some(file) = file_name.to_str() else {
                continue;
            };
            if file.ends_with(".tmp") {
                // A snapshot a crash interrupted before its rename.
                let path = item.path();
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
                continue;
            }
            match parse_name(file) {
                Some((Kind::Snapshot, g)) => snapshots.push(g),
                Some((Kind::Journal, g)) => journals.push(g),
                None => {}
            }
        }
        let base = snapshots.iter().copied().max().unwrap_or(0);
        journals.retain(|&g| g >= base);
        journals.sort_unstable();

        let mut loaded = Loaded::default();
        let mut last_snapshot_bytes = 0;
        if !snapshots.is_empty() {
            let path = dir.join(name(Kind::Snapshot, base));
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            let scan = frame::scan(Kind::Snapshot, &bytes).map_err(|b| damaged(&path, &b))?;
            // Snapshots are renamed into place only once synced: one whole
            // frame, nothing else, or the file was damaged afterwards.
            if scan.payloads.len() != 1 || scan.torn_bytes != 0 {
                return Err(StoreError::Damaged {
                    path,
                    detail: "the snapshot is incomplete".to_owned(),
                });
            }
            let payload = scan.payloads[0].to_vec();
            last_snapshot_bytes = bytes.len() as u64;
            loaded.snapshot = Some((path, payload));
        }
        let last = journals.last().copied();
        let mut journal_len = frame::HEADER_LEN as u64;
        for &g in &journals {
            let path = dir.join(name(Kind::Journal, g));
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            let scan = frame::scan(Kind::Journal, &bytes).map_err(|b| damaged(&path, &b))?;
            if scan.torn_bytes > 0 {
                if Some(g) != last {
                    // Later journals build on what was lost here.
                    return Err(StoreError::Damaged {
                        path,
                        detail: format!(
                            "{} bytes at the end do not form a whole entry, and a newer journal follows",
                            scan.torn_bytes
                        ),
                    });
                }
                loaded.torn.push((path.clone(), scan.torn_bytes));
            }
            let mut at = frame::HEADER_LEN as u64;
            let payloads = scan
                .payloads
                .iter()
                .map(|p| {
                    let offset = at;
                    at += (frame::FRAME_OVERHEAD + p.len()) as u64;
                    (offset, p.to_vec())
                })
                .collect();
            if Some(g) == last {
                journal_len = scan.valid_len.max(frame::HEADER_LEN as u64);
            }
            loaded.journals.push((path, payloads));
        }

        // Append to the newest journal (its torn tail cut off), or start
        // the snapshot's generation.
        let generation = last.unwrap_or(base);
        let journal_path = dir.join(name(Kind::Journal, generation));
        let journal = if last.is_some() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&journal_path)
                .map_err(StoreError::io(&journal_path))?;
            let on_disk = file
                .metadata()
                .map_err(StoreError::io(&journal_path))?
                .len();
            if on_disk < frame::HEADER_LEN as u64 {
                // Created, header never (fully) written.
                file.set_len(0).map_err(StoreError::io(&journal_path))?;
                let mut f = file;
                f.write_all(&frame::header(Kind::Journal))
                    .map_err(StoreError::io(&journal_path))?;
                f.sync_data().map_err(StoreError::io(&journal_path))?;
                f
            } else {
                if on_disk != journal_len {
                    file.set_len(journal_len)
                        .map_err(StoreError::io(&journal_path))?;
                    file.sync_data().map_err(StoreError::io(&journal_path))?;
                }
                file
            }
        } else {
            create_journal(&journal_path)?
        };
        let mut journal = journal;
        use std::io::Seek;
        journal
            .seek(io::SeekFrom::End(0))
            .map_err(StoreError::io(&journal_path))?;
        sync_dir(&dir)?;
        Ok((
            Self {
                options,
                _lock: lock,
                generation,
                journal,
                journal_path,
                journal_len,
                batch: Vec::with_capacity(64 * 1024),
                batch_entries: 0,
                unsynced_since: None,
                snapshot_job: None,
                last_snapshot_bytes,
                written: 0,
                failed: false,
                retry_at: None,
                fault: Arc::new(AtomicBool::new(false)),
            },
            loaded,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// The current generation (the journal being appended to).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes appended to journals since the store opened.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// A write failed and no snapshot has succeeded since: the state on
    /// disk is behind the state in memory.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Adds one entry to the turn being built.
    pub fn add(&mut self, entry: &impl Serialize) {
        let start = self.batch.len();
        self.batch.extend_from_slice(&[0; frame::FRAME_OVERHEAD]);
        serde_json::to_writer(&mut self.batch, entry).expect("journal entries serialize");
        let payload = &self.batch[start + frame::FRAME_OVERHEAD..];
        let len = u32::try_from(payload.len()).expect("an entry below 4 GiB");
        let crc = crc32fast::hash(payload);
        self.batch[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.batch[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.batch_entries += 1;
    }

    /// Entries added since the last commit.
    pub fn pending(&self) -> usize {
        self.batch_entries
    }

    /// Writes the turn's entries with one write (and syncs them in
    /// [`Durability::Fsync`]). On failure the store stops appending (it is
    /// [`Store::failed`]) until [`Store::snapshot`] succeeds: the entries
    /// that could not be written are in memory only.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch_len = self.batch.len() as u64;
        self.batch_entries = 0;
        if self.failed {
            self.batch.clear();
            return Ok(());
        }
        let result = if self.fault.load(Ordering::Relaxed) {
            Err(io::Error::from_raw_os_error(ENOSPC))
        } else {
            self.journal.write_all(&self.batch)
        };
        self.batch.clear();
        let result = result.and_then(|()| match self.options.durability {
            Durability::Fsync => self.journal.sync_data(),
            Durability::Write => Ok(()),
        });
        match result {
            Ok(()) => {
                self.journal_len += batch_len;
                self.written += batch_len;
                if self.options.durability == Durability::Write && self.unsynced_since.is_none() {
                    self.unsynced_since = Some(Instant::now());
                }
                Ok(())
            }
            Err(source) => {
                self.failed = true;
                Err(StoreError::Io {
                    path: self.journal_path.clone(),
                    source,
                })
            }
        }
    }

    /// When unsynced data must be synced ([`Durability::Write`]).
    pub fn sync_due(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + self.options.fsync_interval)
    }

    /// Syncs the journal to the disk.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.unsynced_since = None;
        if self.failed {
            return Ok(());
        }
        self.journal
            .sync_data()
            .map_err(StoreError::io(&self.journal_path))
    }

    /// A new generation is due: the journal outgrew its budget, or a failed
    /// write waits for a snapshot to catch the disk up; and no snapshot is
    /// being written, and a failed one is not retried more than once a
    /// second.
    pub fn wants_snapshot(&mut self) -> bool {
        if let Some(job) = &self.snapshot_job {
            if !job.is_finished() {
                return false;
            }
            let job = self.snapshot_job.take().expect("checked");
            let outcome = job.join().unwrap_or_else(|_| {
                Err(StoreError::Damaged {
                    path: self.options.dir.clone(),
                    detail: "the snapshot writer panicked".to_owned(),
                })
            });
            if let Ok(bytes) = outcome {
                self.last_snapshot_bytes = bytes;
            }
            if let Err(e) = outcome {
                // Nothing is lost: the older snapshot and every journal
                // since are still there. Only the disk use grows.
                tracing::error!(error = %e, "writing a snapshot failed; retrying in a second");
                self.retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        // Copying the state stalls the hub for a time that grows with the
        // state (not with the traffic): wait until the journal is at least
        // as big as the last snapshot too, so that copies stay a bounded
        // share of the work however much is held, and a start reads at
        // most about twice the snapshot.
        let budget = self
            .options
            .snapshot_after_bytes
            .max(self.last_snapshot_bytes);
        self.failed || self.journal_len >= budget
    }

    /// Starts generation `n + 1`, whose snapshot is `state`: with `wait`
    /// (clean shutdown, catching up after a failed write) the snapshot is
    /// written first and then the new journal opened; without, the new
    /// journal is opened at once (every later entry goes there) and the
    /// snapshot written on a background thread. Once a snapshot is safely
    /// on disk, the older generations are removed.
    pub fn snapshot(
        &mut self,
        state: impl Serialize + Send + 'static,
        wait: bool,
    ) -> Result<(), StoreError> {
        // One snapshot at a time: a running one finishes first.
        if let Some(job) = self.snapshot_job.take() {
            if let Ok(Err(e)) = job.join() {
                tracing::warn!(error = %e, "an earlier snapshot failed");
            }
        }
        let next = self.generation + 1;
        let dir = self.options.dir.clone();
        let fault = self.fault.clone();
        let write = move || -> Result<u64, StoreError> {
            if fault.load(Ordering::Relaxed) {
                return Err(StoreError::Io {
                    path: dir.join(name(Kind::Snapshot, next)),
                    source: io::Error::from_raw_os_error(ENOSPC),
                });
            }
            let bytes = write_snapshot(&dir, next, &state)?;
            remove_older(&dir, next)?;
            Ok(bytes)
        };
        let mut write = Some(write);
        if wait {
            let write = write.take().expect("set");
            match write() {
                Ok(bytes) => self.last_snapshot_bytes = bytes,
                Err(e) => {
                    self.retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
                    return Err(e);
                }
            }
        }
        let journal_path = self.options.dir.join(name(Kind::Journal, next));
        let journal = if self.fault.load(Ordering::Relaxed) {
            Err(StoreError::Io {
                path: journal_path.clone(),
                source: io::Error::from_raw_os_error(ENOSPC),
            })
        } else {
            create_journal(&journal_path)
        };
        let journal = match journal {
            Ok(j) => j,
            Err(e) => {
                self.failed = true;
                self.retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
                return Err(e);
            }
        };
        // The old journal is complete: sync it (recovery replays it while
        // the new snapshot is not on disk yet).
        if !self.failed {
            self.journal
                .sync_data()
                .map_err(StoreError::io(&self.journal_path))?;
        }
        if let Some(write) = write {
            self.snapshot_job = Some(std::thread::spawn(write));
        }
        self.journal = journal;
        self.journal_path = journal_path;
        self.journal_len = frame::HEADER_LEN as u64;
        self.generation = next;
        self.unsynced_since = None;
        self.failed = false;
        self.retry_at = None;
        Ok(())
    }

    /// Waits for a snapshot being written, if any.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(job) = self.snapshot_job.take() {
            let bytes = job.join().unwrap_or_else(|_| {
                Err(StoreError::Damaged {
                    path: self.options.dir.clone(),
                    detail: "the snapshot writer panicked".to_owned(),
                })
            })?;
            self.last_snapshot_bytes = bytes;
        }
        Ok(())
    }

    /// Lets the next snapshot be tried at once (tests).
    #[cfg(test)]
    pub(crate) fn retry_now(&mut self) {
        self.retry_at = None;
    }

    /// Makes every later write fail as on a full disk (`on`), or work again.
    #[doc(hidden)]
    pub fn fail_writes(&self) -> Arc<AtomicBool> {
        self.fault.clone()
    }
}

fn create_journal(path: &Path) -> Result<File, StoreError> {
    // Truncating: a file of this generation can only be one a failed
    // attempt left empty.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))?;
    file.write_all(&frame::header(Kind::Journal))
        .and_then(|()| file.sync_data())
        .map_err(StoreError::io(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Writes generation `generation`'s snapshot; returns its size in bytes.
fn write_snapshot(dir: &Path, generation: u64, state: &impl Serialize) -> Result<u64, StoreError> {
    let path = dir.join(name(Kind::Snapshot, generation));
    let tmp = dir.join(format!("{}.tmp", name(Kind::Snapshot, generation)));
    let payload = serde_json::to_vec(state).map_err(|e| StoreError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let mut bytes = Vec::with_capacity(payload.len() + frame::HEADER_LEN + frame::FRAME_OVERHEAD);
    bytes.extend_from_slice(&frame::header(Kind::Snapshot));
    frame::push_frame(&mut bytes, &payload);
    let mut file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io(&tmp))?;
    fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
    sync_dir(dir)?;
    Ok(bytes.len() as u64)
}

/// Removes the snapshots and journals of generations before `generation`.
fn remove_older(dir: &Path, generation: u64) -> Result<(), StoreError> {
    for item in fs::read_dir(dir).map_err(StoreError::io(dir))? {
        let item = item.map_err(StoreError::io(dir))?;
        if let Some((_, g)) = item.file_name().to_str().and_then(parse_name) {
            if g < generation {
                let path = item.path();
                fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
pub(crate) mod tests;
