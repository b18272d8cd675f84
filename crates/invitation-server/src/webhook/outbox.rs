//! The durable outbox: `<data dir>/webhooks/outbox-<segment>.jsonl`, one
//! event body per line, appended by the hub after the journal; and one
//! `cursor-<endpoint>` file per endpoint saying how far it was delivered
//! (`<segment> <byte offset>`). A segment is closed at
//! [`SEGMENT_BYTES`] and deleted once every endpoint is past it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::HookEvent;

/// A segment is closed once it is this long.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;

/// Most bytes a delivery task reads from the outbox at once.
pub(crate) const READ_BYTES: usize = 256 << 10;

/// A place in the outbox: (segment, byte offset in it).
pub(crate) type Position = (u64, u64);

pub(crate) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("outbox-{segment:012}.jsonl"))
}

/// The cursor file of the endpoint `url` (named by a hash of the URL, so
/// reordering `webhook_urls` keeps each endpoint's place).
pub(crate) fn cursor_path(dir: &Path, url: &str) -> PathBuf {
    let hash = Sha256::digest(url.as_bytes());
    let name: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("cursor-{name}"))
}

pub(crate) fn read_cursor(path: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(path).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some((segment.parse().ok()?, offset.parse().ok()?))
}

/// Writes a cursor (a new file renamed over the old one: never torn).
pub(crate) fn write_cursor(path: &Path, at: Position) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {}\n", at.0, at.1))?;
    std::fs::rename(&tmp, path)
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("outbox-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The hub's side of the outbox.
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    segment: u64,
    file: File,
    len: u64,
    /// Sync every append (durability `fsync`), else with the journal's
    /// sync timer.
    sync_each: bool,
    unsynced: bool,
    /// The end of what is written, for the delivery tasks.
    end: watch::Sender<Position>,
    /// The cursor files of the configured endpoints.
    cursors: Vec<PathBuf>,
    buf: Vec<u8>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
}

impl Outbox {
    /// Opens (or makes) the outbox in `dir`, dropping a torn last line
    /// (a write the last run did not finish).
    pub(crate) fn open(dir: &Path, urls: &[String], sync_each: bool) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let segment = segments(dir)?.last().copied().unwrap_or(1);
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            tracing::warn!(file = %path.display(), bytes = bytes.len() - whole, "the webhook outbox ended in a torn write: dropped it");
            file.set_len(whole as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let (end, _) = watch::channel((segment, whole as u64));
        Ok(Self {
            dir: dir.to_owned(),
            segment,
            file,
            len: whole as u64,
            sync_each,
            unsynced: false,
            end,
            cursors: urls.iter().map(|u| cursor_path(dir, u)).collect(),
            buf: Vec::new(),
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// Where the delivery tasks learn of new events.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Position> {
        self.end.subscribe()
    }

    /// The outbox's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the events (one write), then tells the delivery tasks.
    pub(crate) fn append(&mut self, events: &[HookEvent]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for event in events {
            self.buf.extend_from_slice(event.body.as_bytes());
            self.buf.push(b'\n');
        }
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        if self.sync_each {
            self.file.sync_data()?;
        } else {
            self.unsynced = true;
        }
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        self.end.send_replace((self.segment, self.len));
        Ok(())
    }

    /// The ids of the events in the newest two segments (where the events
    /// of the last turns before a crash are, if they were written).
    pub(crate) fn recent_ids(&self) -> io::Result<std::collections::HashSet<String>> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        let mut ids = std::collections::HashSet::new();
        for segment in [self.segment.saturating_sub(1), self.segment] {
            let text = match std::fs::read(segment_path(&self.dir, segment)) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in text.split(|&b| b == b'\n') {
                if let Ok(Id { id }) = serde_json::from_slice(line) {
                    ids.insert(id);
                }
            }
        }
        Ok(ids)
    }

    /// Syncs what was appended since the last sync.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Starts the next segment and deletes the ones every endpoint is past.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = false;
        let next = self.segment + 1;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(segment_path(&self.dir, next))?;
        File::open(&self.dir).and_then(|d| d.sync_all())?;
        self.file = file;
        self.segment = next;
        self.len = 0;
        let oldest_needed = self
            .cursors
            .iter()
            .map(|c| read_cursor(c).map_or(0, |(s, _)| s))
            .min()
            .unwrap_or(next);
        for old in segments(&self.dir)? {
            if old < oldest_needed {
                std::fs::remove_file(segment_path(&self.dir, old))?;
            }
        }
        Ok(())
    }
}

/// Reads whole lines from `segment` at `offset`, at most [`READ_BYTES`]
/// and not past `limit` (when given): each line with the offset after it.
pub(crate) fn read_lines(
    dir: &Path,
    segment: u64,
    offset: u64,
    limit: Option<u64>,
) -> io::Result<Vec<(String, u64)>> {
    let mut file = match File::open(segment_path(dir, segment)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let want = limit.map_or(READ_BYTES as u64, |l| {
        l.saturating_sub(offset).min(READ_BYTES as u64)
    });
    let mut bytes = Vec::new();
    file.take(want).read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(i) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&bytes[start..start + i]).into_owned();
        start += i + 1;
        lines.push((line, offset + start as u64));
    }
    if lines.is_empty() && bytes.len() == READ_BYTES {
        // One line longer than a read: events are far smaller; skip it.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a webhook outbox line longer than a read",
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> HookEvent {
        HookEvent {
            id: format!("e{n}"),
            created_ms: 1,
            body: format!("{{\"id\":\"e{n}\",\"created_at\":1}}"),
        }
    }

    fn ids(lines: &[(String, u64)]) -> Vec<&str> {
        lines
            .iter()
            .map(|(l, _)| &l[7..l.find("\",").unwrap()])
            .collect()
    }

    /// Lines are read whole, from an offset, up to a limit; segments close
    /// at their size and are deleted only once every endpoint's cursor is
    /// past them; a torn last line is dropped when the outbox is reopened.
    #[test]
    fn segments_rotate_and_go_once_every_endpoint_is_past_them() {
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "invitation-outbox-{}",
            name.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let urls = ["http://a/".to_owned(), "http://b/".to_owned()];
        let mut outbox = Outbox::open(&dir, &urls, false).unwrap();
        let end = outbox.subscribe();
        // Each line is 27 bytes: the segment closes after the fourth.
        outbox.segment_bytes = 100;
        outbox.append(&[event(0), event(1)]).unwrap();
        assert_eq!(*end.borrow(), (1, 54));
        let lines = read_lines(&dir, 1, 0, Some(54)).unwrap();
        assert_eq!(ids(&lines), ["e0", "e1"]);
        assert_eq!(lines[1].1, 54);
        let from_second = read_lines(&dir, 1, 27, Some(54)).unwrap();
        assert_eq!(ids(&from_second), ["e1"]);
        assert!(read_lines(&dir, 1, 0, Some(26)).unwrap().is_empty());
        // Endpoint a is at the start, b has no cursor yet: nothing goes.
        write_cursor(&cursor_path(&dir, &urls[0]), (1, 0)).unwrap();
        outbox.append(&[event(2), event(3)]).unwrap();
        assert_eq!(*end.borrow(), (2, 0));
        assert!(segment_path(&dir, 1).exists());
        // Both past segment 1: the next rotation deletes it.
        write_cursor(&cursor_path(&dir, &urls[0]), (2, 0)).unwrap();
        write_cursor(&cursor_path(&dir, &urls[1]), (2, 27)).unwrap();
        outbox
            .append(&[event(4), event(5), event(6), event(7)])
            .unwrap();
        assert_eq!(*end.borrow(), (3, 0));
        assert!(!segment_path(&dir, 1).exists());
        assert!(segment_path(&dir, 2).exists(), "b still needs segment 2");
        assert_eq!(
            ids(&read_lines(&dir, 2, 27, None).unwrap()),
            ["e5", "e6", "e7"]
        );
        assert_eq!(read_cursor(&cursor_path(&dir, &urls[1])), Some((2, 27)));
        // A torn write at the end of the newest segment.
        outbox.append(&[event(8)]).unwrap();
        drop(outbox);
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(&dir, 3))
            .unwrap();
        file.write_all(b"{\"id\":\"e9\",\"crea").unwrap();
        drop(file);
        let again = Outbox::open(&dir, &urls, false).unwrap();
        assert_eq!(*again.subscribe().borrow(), (3, 27));
        assert_eq!(std::fs::metadata(segment_path(&dir, 3)).unwrap().len(), 27);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
