//! Request-id memory: the answer to every command, kept for the retention
//! period so a retried command (same device, same request id) gets the same
//! answer and changes nothing.
//!
//! Every invitation leaves one entry here for ten minutes, so its size is
//! a large part of what a pending invitation costs. Three choices keep an
//! entry near 120 bytes (it was ~280):
//!
//! - one allocation per entry, shared (`Arc`) by the hash set and the
//!   expiry queue, instead of a key stored twice and a boxed answer;
//! - the request id is kept only inside a 64-bit keyed digest of (user,
//!   device, request id) (foldhash, random seed per switchboard, kept by
//!   its snapshots so restored digests still match), not as a
//!   string. Two different ids of the *same device*
//!   colliding within the retention period is a ~2^-64 event per pair, and a
//!   client cannot aim a collision at anyone but itself: user and device
//!   are compared exactly;
//! - the answer to an invite, by far the most common, is kept as the call's
//!   shared [`CallInfo`] plus packed statuses and rebuilt on a replay.
//!
//! What is kept, and for whom:
//!
//! - only answers a later run of the command could contradict
//!   ([`worth_remembering`]): most refusals (unknown call, invalid, already
//!   ended) changed nothing and never could, so running a retry again is as
//!   good as replaying the answer, and a flood of commands for unknown
//!   calls costs no memory;
//! - each user has a share: past `per_user` entries, that user's oldest
//!   answer is forgotten, never someone else's. Only the global cap (a
//!   safety net far above any share) forgets across users, oldest first.
//!   An entry forgotten for its user's share stays allocated in the expiry
//!   queue until it expires (the command rate limit bounds how many).
//! - counting costs nothing per user: answers are counted in a fixed table
//!   of counters indexed by a hash of the user (collisions only over-count).
//!   Only a user whose counter passes the share is tracked exactly (its
//!   answers found once in the expiry queue, then kept in a list), so the
//!   million users of the memory benchmark, one answer each, pay no map
//!   entry and no list.

use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};

use foldhash::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use super::call::CallInfo;
use serde::{Deserialize, Serialize};

use crate::error::{CommandError, ErrorCode};
use crate::id::{DeviceId, RequestId, UserId};
use crate::model::Reason;
use crate::protocol::{CalleeStatus, InitialStatus, ReplyResult};

/// Who asked, and a keyed hash of (user, device, request id).
///
/// Only the digest is hashed by the set: growing the set then rehashes
/// plain integers instead of chasing every entry's user and device strings
/// through cold memory (that chase made flows ~20 % slower with 50,000
/// invitations pending). Equality still compares user and device exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestKey {
    user: UserId,
    device: DeviceId,
    digest: u64,
}

impl Hash for RequestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// A stored answer.
#[derive(Debug)]
enum Answer {
    /// `invited`: callee ids and the call id come from the call's info.
    Invited {
        call: Arc<CallInfo>,
        ring_remaining_ms: u32,
        /// 3 bits per callee, in callee order.
        statuses: u64,
    },
    /// Anything else, as it was (boxed: keeps the common entry small).
    Other(Box<Result<ReplyResult, CommandError>>),
}

#[derive(Debug)]
struct Remembered {
    key: RequestKey,
    expires: Instant,
    answer: Answer,
}

/// A set element hashed and compared by its key only.
#[derive(Debug)]
struct Entry(Arc<Remembered>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for Entry {}
impl Borrow<RequestKey> for Entry {
    fn borrow(&self) -> &RequestKey {
        &self.0.key
    }
}

const STATUS_BITS: u32 = 3;
const MAX_PACKED: usize = (u64::BITS / STATUS_BITS) as usize;

fn status_code(s: InitialStatus) -> u64 {
    match s {
        InitialStatus::Ringing => 0,
        InitialStatus::Offline => 1,
        InitialStatus::Busy => 2,
        InitialStatus::Unreachable => 3,
        InitialStatus::Joined => 4,
    }
}

fn status_of(code: u64) -> InitialStatus {
    match code {
        0 => InitialStatus::Ringing,
        1 => InitialStatus::Offline,
        2 => InitialStatus::Busy,
        3 => InitialStatus::Unreachable,
        _ => InitialStatus::Joined,
    }
}

impl Answer {
    /// The compact form when `result` is the `invited` answer for `call`.
    fn new(result: &Result<ReplyResult, CommandError>, call: Option<&Arc<CallInfo>>) -> Self {
        if let (
            Ok(ReplyResult::Invited {
                call_id,
                ring_remaining_ms,
                callees,
            }),
            Some(call),
        ) = (result, call)
        {
            let same_callees = callees.len() == call.callees.len()
                && callees
                    .iter()
                    .zip(call.callees.iter())
                    .all(|(s, u)| s.user == u.id);
            if let (true, true, true, Ok(ring)) = (
                &call.call_id == call_id,
                same_callees,
                callees.len() <= MAX_PACKED,
                u32::try_from(*ring_remaining_ms),
            ) {
                let statuses = callees.iter().enumerate().fold(0, |acc, (i, s)| {
                    acc | status_code(s.status) << (i as u32 * STATUS_BITS)
                });
                return Answer::Invited {
                    call: call.clone(),
                    ring_remaining_ms: ring,
                    statuses,
                };
            }
        }
        Answer::Other(Box::new(result.clone()))
    }

    fn rebuild(&self) -> Result<ReplyResult, CommandError> {
        match self {
            Answer::Invited {
                call,
                ring_remaining_ms,
                statuses,
            } => Ok(ReplyResult::Invited {
                call_id: call.call_id.clone(),
                ring_remaining_ms: u64::from(*ring_remaining_ms),
                callees: call
                    .callees
                    .iter()
                    .enumerate()
                    .map(|(i, u)| CalleeStatus {
                        user: u.id.clone(),
                        status: status_of(statuses >> (i as u32 * STATUS_BITS) & 0b111),
                    })
                    .collect(),
            }),
            Answer::Other(result) => (**result).clone(),
        }
    }
}

/// Should the answer to a command be kept for its retries? Only when a
/// later run of the same command could do something else than the first:
///
/// - a success that changed state (`changed`: it produced events; a new
///   call, an accept, a decline, a cancel, a hang-up) is kept: run again,
///   a retried accept after the call ended would hear `ended`, a retried
///   invite would make a second call;
/// - a refusal that a later run might turn into an action is kept:
///   `caller_busy` (the caller's other call may end), `wrong_role` (a
///   callee's hang-up while still ringing would hang up once accepted) and
///   `forbidden` (an app's contact policy may change its mind),
///   `already_in_call` (the ring of the user named may end), and an
///   `ended` answer to a `join` (someone may accept later; the switchboard
///   passes `reopens`). Remembered, a late duplicate of the refused command
///   stays refused;
/// - every other refusal changed nothing and cannot succeed later (`invalid`;
///   `ended`: ends are final), or only after the user is added to the call
///   (`not_found`: someone in the call may `add` them, and a retry after
///   that runs as what it is then), so a retry simply runs again: a flood
///   of commands for unknown calls costs no memory;
/// - a success that changed nothing (cancelling twice, hanging up an ended
///   call) is idempotent by construction: running it again changes nothing
///   either.
pub(crate) fn worth_remembering(
    result: &Result<ReplyResult, CommandError>,
    changed: bool,
    reopens: bool,
) -> bool {
    match result {
        Ok(_) => changed,
        Err(
            CommandError::CallerBusy
            | CommandError::WrongRole
            | CommandError::Forbidden { .. }
            | CommandError::AlreadyInCall { .. },
        ) => true,
        Err(CommandError::Ended { .. }) => reopens,
        Err(_) => false,
    }
}

/// Counters of the per-user share table (a power of two).
const SHARE_BUCKETS: usize = 1 << 16;

/// The remembered answers, oldest first in `order`, and per user.
#[derive(Debug)]
pub(crate) struct Requests {
    /// The digest and share-bucket hasher's seed (random per switchboard;
    /// a snapshot keeps it, so restored digests still match).
    seed: u64,
    set: HashSet<Entry, foldhash::fast::FixedState>,
    /// Every entry in insertion (= expiry) order, including entries already
    /// forgotten for their user's share (skipped when they come up).
    order: VecDeque<Arc<Remembered>>,
    /// Answers held per hashed user: an upper bound of each user's count.
    counts: Box<[u32]>,
    /// Users whose counter passed their share: their entries, oldest first.
    heavy: HashMap<UserId, VecDeque<Arc<Remembered>>>,
}

impl Default for Requests {
    fn default() -> Self {
        // A random seed (the process-wide random hasher hashes a constant).
        let seed = foldhash::fast::RandomState::default().hash_one(0x5eed_u64);
        Self::with_seed(seed)
    }
}

impl Requests {
    /// Empty, hashing with this seed.
    pub(crate) fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            set: HashSet::with_hasher(foldhash::fast::FixedState::with_seed(seed)),
            order: VecDeque::new(),
            counts: vec![0; SHARE_BUCKETS].into_boxed_slice(),
            heavy: HashMap::default(),
        }
    }
}

impl Requests {
    /// The key for a request id sent by this device.
    pub(crate) fn key(&self, user: &UserId, device: &DeviceId, request: &RequestId) -> RequestKey {
        RequestKey {
            user: user.clone(),
            device: device.clone(),
            digest: self
                .set
                .hasher()
                .hash_one((user.as_str(), device.as_str(), request.as_str())),
        }
    }

    /// The stored answer, if this request was seen.
    pub(crate) fn get(&self, key: &RequestKey) -> Option<Result<ReplyResult, CommandError>> {
        self.set.get(key).map(|e| e.0.answer.rebuild())
    }

    /// Remembers `result` until `expires`; `call` is the new call's info
    /// when `result` answers an invite. Past `per_user` entries for the
    /// same user, that user's oldest is forgotten.
    pub(crate) fn insert(
        &mut self,
        key: RequestKey,
        expires: Instant,
        result: &Result<ReplyResult, CommandError>,
        call: Option<&Arc<CallInfo>>,
        per_user: usize,
    ) {
        let answer = Answer::new(result, call);
        debug_assert_eq!(&answer.rebuild(), result, "the compact answer rebuilds");
        let entry = Arc::new(Remembered {
            key,
            expires,
            answer,
        });
        let per_user = per_user.max(1);
        let user = entry.key.user.clone();
        let bucket = self.bucket(&user);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        if !self.heavy.contains_key(&user) && self.counts[bucket] as usize > per_user {
            // Maybe over its share (or sharing a counter): count exactly,
            // once, from the expiry queue.
            let set = &self.set;
            let mine: VecDeque<Arc<Remembered>> = self
                .order
                .iter()
                .filter(|e| e.key.user == user && is_live(set, e))
                .cloned()
                .collect();
            self.heavy.insert(user.clone(), mine);
        }
        if let Some(mine) = self.heavy.get_mut(&user) {
            mine.push_back(entry.clone());
            while mine.len() > per_user {
                let oldest = mine.pop_front().expect("over the share");
                if remove_if_same(&mut self.set, &oldest) {
                    self.counts[bucket] = self.counts[bucket].saturating_sub(1);
                }
            }
        }
        self.order.push_back(entry.clone());
        if let Some(old) = self.set.replace(Entry(entry)) {
            // The same request remembered again: the older answer is gone.
            let b = self.bucket(&old.0.key.user);
            self.counts[b] = self.counts[b].saturating_sub(1);
        }
    }

    fn bucket(&self, user: &UserId) -> usize {
        (self.set.hasher().hash_one(user.as_str()) as usize) & (SHARE_BUCKETS - 1)
    }

    /// Forgets answers expired at `now`, and the oldest beyond `cap`.
    pub(crate) fn forget(&mut self, now: Instant, cap: usize) {
        while let Some(oldest) = self.order.front() {
            if oldest.expires > now && self.set.len() <= cap {
                break;
            }
            let oldest = self.order.pop_front().expect("front exists");
            if remove_if_same(&mut self.set, &oldest) {
                let b = self.bucket(&oldest.key.user);
                self.counts[b] = self.counts[b].saturating_sub(1);
            }
            // Unless its user's share already pushed it out, it is that
            // user's oldest entry (both queues are in insertion order).
            let user = &oldest.key.user;
            if let Some(mine) = self.heavy.get_mut(user) {
                if mine.front().is_some_and(|e| Arc::ptr_eq(e, &oldest)) {
                    mine.pop_front();
                }
                if mine.is_empty() {
                    self.heavy.remove(user);
                }
            }
        }
    }

    /// Answers held.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

/// True when the set holds this very entry (not a newer one with its key).
fn is_live(set: &HashSet<Entry, foldhash::fast::FixedState>, entry: &Arc<Remembered>) -> bool {
    set.get(&entry.key)
        .is_some_and(|e| Arc::ptr_eq(&e.0, entry))
}

/// Removes `entry` from the set if the set holds this very entry (not a
/// newer one with the same key); true if it did.
fn remove_if_same(
    set: &mut HashSet<Entry, foldhash::fast::FixedState>,
    entry: &Arc<Remembered>,
) -> bool {
    let live = is_live(set, entry);
    if live {
        set.remove(&entry.key);
    }
    live
}

// ----- snapshots (crate::durable) ------------------------------------------

/// A stored refusal as a snapshot keeps it. Only refusals worth
/// remembering are ever stored; `invalid` (which names a static field) is
/// not representable and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub(crate) enum StoredError {
    NotFound,
    WrongRole,
    Ended { reason: Reason },
    CallerBusy,
    NotConnected,
    Misplaced,
    TimedOut,
    RateLimited { ms: u64 },
    Unavailable { ms: u64 },
    Forbidden { callee: UserId },
    AlreadyInCall { user: UserId },
    Rejected { code: ErrorCode, message: String },
}

impl StoredError {
    fn of(e: &CommandError) -> Option<Self> {
        Some(match e {
            CommandError::NotFound => Self::NotFound,
            CommandError::WrongRole => Self::WrongRole,
            CommandError::Ended { reason } => Self::Ended { reason: *reason },
            CommandError::CallerBusy => Self::CallerBusy,
            CommandError::NotConnected => Self::NotConnected,
            CommandError::Misplaced => Self::Misplaced,
            CommandError::TimedOut => Self::TimedOut,
            CommandError::RateLimited { retry_after_ms } => Self::RateLimited {
                ms: *retry_after_ms,
            },
            CommandError::Unavailable { retry_after_ms } => Self::Unavailable {
                ms: *retry_after_ms,
            },
            CommandError::Forbidden { callee } => Self::Forbidden {
                callee: callee.clone(),
            },
            CommandError::AlreadyInCall { user } => Self::AlreadyInCall { user: user.clone() },
            CommandError::Rejected { code, message } => Self::Rejected {
                code: *code,
                message: message.clone(),
            },
            CommandError::Invalid(_) => return None,
        })
    }

    fn error(self) -> CommandError {
        match self {
            Self::NotFound => CommandError::NotFound,
            Self::WrongRole => CommandError::WrongRole,
            Self::Ended { reason } => CommandError::Ended { reason },
            Self::CallerBusy => CommandError::CallerBusy,
            Self::NotConnected => CommandError::NotConnected,
            Self::Misplaced => CommandError::Misplaced,
            Self::TimedOut => CommandError::TimedOut,
            Self::RateLimited { ms } => CommandError::RateLimited { retry_after_ms: ms },
            Self::Unavailable { ms } => CommandError::Unavailable { retry_after_ms: ms },
            Self::Forbidden { callee } => CommandError::Forbidden { callee },
            Self::AlreadyInCall { user } => CommandError::AlreadyInCall { user },
            Self::Rejected { code, message } => CommandError::Rejected { code, message },
        }
    }
}

/// A remembered answer as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AnswerImage {
    /// `invited`, by index into the snapshot's call infos.
    Invited {
        info: u32,
        ring_ms: u32,
        statuses: u64,
    },
    Ok(ReplyResult),
    Err(StoredError),
}

/// One entry of the expiry queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RememberedImage {
    user: UserId,
    device: DeviceId,
    digest: u64,
    /// Unix ns.
    expires: i64,
    answer: AnswerImage,
    /// Still answers retries (false: forgotten for its user's share, or
    /// replaced; waits in the queue for its expiry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    live: bool,
}

/// The request-id memory as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RequestsImage {
    seed: u64,
    order: Vec<RememberedImage>,
    /// Users tracked exactly: their entries, as indices into `order`.
    heavy: Vec<(UserId, Vec<u32>)>,
}

impl Requests {
    /// The whole memory; `info` maps a call's info to its index in the
    /// snapshot, `ns` converts an instant.
    pub(crate) fn image(
        &self,
        info: &mut dyn FnMut(&Arc<CallInfo>) -> u32,
        ns: &dyn Fn(Instant) -> i64,
    ) -> RequestsImage {
        let mut index: HashMap<*const Remembered, u32> = HashMap::default();
        let mut order = Vec::with_capacity(self.order.len());
        for e in &self.order {
            let answer = match &e.answer {
                Answer::Invited {
                    call,
                    ring_remaining_ms,
                    statuses,
                } => AnswerImage::Invited {
                    info: info(call),
                    ring_ms: *ring_remaining_ms,
                    statuses: *statuses,
                },
                Answer::Other(r) => match &**r {
                    Ok(r) => AnswerImage::Ok(r.clone()),
                    Err(err) => match StoredError::of(err) {
                        Some(err) => AnswerImage::Err(err),
                        None => continue, // never stored (see StoredError)
                    },
                },
            };
            index.insert(Arc::as_ptr(e), order.len() as u32);
            order.push(RememberedImage {
                user: e.key.user.clone(),
                device: e.key.device.clone(),
                digest: e.key.digest,
                expires: ns(e.expires),
                answer,
                live: is_live(&self.set, e),
            });
        }
        let mut heavy: Vec<(UserId, Vec<u32>)> = self
            .heavy
            .iter()
            .map(|(user, mine)| {
                let ix = mine
                    .iter()
                    .filter_map(|e| index.get(&Arc::as_ptr(e)).copied())
                    .collect();
                (user.clone(), ix)
            })
            .collect();
        heavy.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        RequestsImage {
            seed: self.seed,
            order,
            heavy,
        }
    }

    /// Rebuilds the memory from `image`; `info` resolves a call info index,
    /// `at` converts unix ns. `None` names the first thing that does not fit.
    pub(crate) fn restore(
        image: RequestsImage,
        info: &dyn Fn(u32) -> Option<Arc<CallInfo>>,
        at: &dyn Fn(i64) -> Instant,
    ) -> Result<Self, String> {
        let mut me = Self::with_seed(image.seed);
        let mut all = Vec::with_capacity(image.order.len());
        for e in image.order {
            let answer = match e.answer {
                AnswerImage::Invited {
                    info: i,
                    ring_ms,
                    statuses,
                } => {
                    let call =
                        info(i).ok_or_else(|| format!("request memory: no call info {i}"))?;
                    if call.callees.len() > MAX_PACKED {
                        // Never stored so (statuses hold 3 bits per callee).
                        return Err(format!(
                            "request memory: an invite answer for {} callees",
                            call.callees.len()
                        ));
                    }
                    Answer::Invited {
                        call,
                        ring_remaining_ms: ring_ms,
                        statuses,
                    }
                }
                AnswerImage::Ok(r) => Answer::Other(Box::new(Ok(r))),
                AnswerImage::Err(err) => Answer::Other(Box::new(Err(err.error()))),
            };
            let entry = Arc::new(Remembered {
                key: RequestKey {
                    user: e.user,
                    device: e.device,
                    digest: e.digest,
                },
                expires: at(e.expires),
                answer,
            });
            if e.live {
                let b = me.bucket(&entry.key.user);
                me.counts[b] = me.counts[b].saturating_add(1);
                me.set.replace(Entry(entry.clone()));
            }
            me.order.push_back(entry.clone());
            all.push(entry);
        }
        for (user, ix) in image.heavy {
            let mut mine = VecDeque::with_capacity(ix.len());
            for i in ix {
                let e = all
                    .get(i as usize)
                    .ok_or_else(|| format!("request memory: no entry {i}"))?;
                mine.push_back(e.clone());
            }
            me.heavy.insert(user, mine);
        }
        Ok(me)
    }
}
