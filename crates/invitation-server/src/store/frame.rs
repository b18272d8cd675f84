//! The on-disk shape shared by journal and snapshot files: a 16-byte header
//! (8-byte magic naming the kind of file, format version, reserved), then
//! frames of `[length: u32 LE][crc32 of the payload: u32 LE][payload]`.
//!
//! Reading tells three endings apart, because they call for different
//! actions:
//! - a clean end (every frame whole and checked);
//! - a **torn tail**: the last frame is cut short, or everything from the
//!   bad frame to the end of the file is zero bytes (a file system that
//!   extended the file before the data landed). That is what a crash in the
//!   middle of a write leaves; the valid prefix is kept;
//! - **corruption**: a whole frame whose checksum fails with data after it,
//!   or a header that is not ours. Nothing is guessed: the caller stops.

use std::fmt;

/// Bytes in a file header.
pub(crate) const HEADER_LEN: usize = 16;
/// Bytes before each payload.
pub(crate) const FRAME_OVERHEAD: usize = 8;

/// Which kind of file a header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Journal,
    Snapshot,
}

impl Kind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Journal => b"INVJRNL\0",
            Kind::Snapshot => b"INVSNAP\0",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Journal => "journal",
            Kind::Snapshot => "snapshot",
        })
    }
}

/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;

/// A file header for `kind`.
pub(crate) fn header(kind: Kind) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(kind.magic());
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends one frame holding `payload` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why a file cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadFile {
    /// Not one of our files (or not this kind).
    Foreign,
    /// Ours, written by a newer format.
    Version(u32),
    /// A whole frame at this offset fails its checksum (or has an
    /// impossible length) and is not at the tail.
    Corrupt { offset: u64 },
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFile::Foreign => {
                f.write_str("not an invitation-server file of this kind (wrong header)")
            }
            BadFile::Version(v) => write!(
                f,
                "written by format version {v}; this build reads version {VERSION}"
            ),
            BadFile::Corrupt { offset } => write!(
                f,
                "damaged frame at byte {offset} (checksum mismatch with data after it)"
            ),
        }
    }
}

/// A file's frames, read.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// Every whole, checked payload, in order.
    pub(crate) payloads: Vec<&'a [u8]>,
    /// Where the valid prefix ends (the file's length when nothing is torn).
    pub(crate) valid_len: u64,
    /// Bytes after the valid prefix (a torn tail), 0 when clean.
    pub(crate) torn_bytes: u64,
}

/// Reads a whole file of `kind`. An empty file (created, never written) is
/// an empty scan; a header cut short is a torn tail of an empty file.
pub(crate) fn scan(kind: Kind, bytes: &[u8]) -> Result<Scan<'_>, BadFile> {
    if bytes.len() < HEADER_LEN {
        // Only a prefix of our own header can be a torn creation.
        let ours = header(kind);
        return if ours.starts_with(bytes) {
            Ok(Scan {
                payloads: Vec::new(),
                valid_len: 0,
                torn_bytes: bytes.len() as u64,
            })
        } else {
            Err(BadFile::Foreign)
        };
    }
    if &bytes[..8] != kind.magic() {
        return Err(BadFile::Foreign);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(BadFile::Version(version));
    }
    let mut payloads = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = || Scan {
            payloads: Vec::new(),
            valid_len: at as u64,
            torn_bytes: rest.len() as u64,
        };
        if rest.len() < FRAME_OVERHEAD {
            return Ok(Scan { payloads, ..torn() });
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let whole = rest.len() - FRAME_OVERHEAD >= len;
        let payload = &rest[FRAME_OVERHEAD..FRAME_OVERHEAD + len.min(rest.len() - FRAME_OVERHEAD)];
        if whole && len > 0 && crc32fast::hash(payload) == crc {
            payloads.push(payload);
            at += FRAME_OVERHEAD + len;
            continue;
        }
        // Cut short, or zeros to the end: a crash mid-write. Anything else
        // is damage the server must not paper over.
        if !whole || rest.iter().all(|&b| b == 0) {
            return Ok(Scan { payloads, ..torn() });
        }
        return Err(BadFile::Corrupt { offset: at as u64 });
    }
    Ok(Scan {
        payloads,
        valid_len: bytes.len() as u64,
        torn_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = header(Kind::Journal).to_vec();
        for p in payloads {
            push_frame(&mut out, p);
        }
        out
    }

    #[test]
    fn a_clean_file_reads_back_every_frame() {
        let bytes = file(&[b"one", b"two", b"three"]);
        let scan = scan(Kind::Journal, &bytes).unwrap();
        assert_eq!(scan.payloads, [&b"one"[..], b"two", b"three"]);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.torn_bytes, 0);
    }

    /// Every cut inside the last frame is a torn tail: the prefix before it
    /// is kept, the rest reported.
    #[test]
    fn every_cut_of_the_last_frame_is_a_torn_tail() {
        let bytes = file(&[b"one", b"two"]);
        let whole_first = HEADER_LEN + FRAME_OVERHEAD + 3;
        for cut in whole_first + 1..bytes.len() {
            let scan = scan(Kind::Journal, &bytes[..cut]).unwrap();
            assert_eq!(scan.payloads, [&b"one"[..]], "cut at {cut}");
            assert_eq!(scan.valid_len, whole_first as u64);
            assert_eq!(scan.torn_bytes, (cut - whole_first) as u64);
        }
    }

    #[test]
    fn zeros_after_the_last_frame_are_a_torn_tail() {
        let mut bytes = file(&[b"one"]);
        let valid = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        let scan = scan(Kind::Journal, &bytes).unwrap();
        assert_eq!(scan.payloads, [&b"one"[..]]);
        assert_eq!(scan.valid_len, valid as u64);
        assert_eq!(scan.torn_bytes, 64);
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_corruption_with_its_offset() {
        let mut bytes = file(&[b"one", b"two", b"three"]);
        let second = HEADER_LEN + FRAME_OVERHEAD + 3;
        bytes[second + FRAME_OVERHEAD] ^= 0x20; // "two" -> "Two"
        assert_eq!(
            scan(Kind::Journal, &bytes).unwrap_err(),
            BadFile::Corrupt {
                offset: second as u64
            }
        );
    }

    #[test]
    fn foreign_files_and_other_versions_are_refused() {
        assert_eq!(
            scan(Kind::Journal, b"{\"hello\": \"world\"}").unwrap_err(),
            BadFile::Foreign
        );
        let snapshot = header(Kind::Snapshot);
        assert_eq!(
            scan(Kind::Journal, &snapshot).unwrap_err(),
            BadFile::Foreign
        );
        let mut newer = header(Kind::Journal);
        newer[8] = 2;
        assert_eq!(
            scan(Kind::Journal, &newer).unwrap_err(),
            BadFile::Version(2)
        );
        // A short file that is not a prefix of our header.
        assert_eq!(
            scan(Kind::Journal, b"PK\x03").unwrap_err(),
            BadFile::Foreign
        );
        // A header cut short is a torn creation.
        let ours = header(Kind::Journal);
        let torn = scan(Kind::Journal, &ours[..5]).unwrap();
        assert_eq!((torn.valid_len, torn.torn_bytes), (0, 5));
    }
}
