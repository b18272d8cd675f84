//! The switchboard's whole state as plain data, for [`crate::durable`]:
//! what a snapshot keeps and how it is rebuilt.
//!
//! Instants become unix nanoseconds (through the caller's conversion). A
//! call's immutable facts ([`CallInfo`]) are shared by the call, the log
//! entries that mention it and the request-id memory: the snapshot keeps
//! each distinct one once, in a table, and everything else refers to it by
//! index, so restoring re-creates exactly the sharing there was (a pending
//! invitation costs after a restart what it cost before).
//!
//! Not kept: what one input produced and the owner has not drained yet
//! (outputs, notices). Take snapshots between inputs, after draining.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use super::acts::CallExtras;
use super::call::{Call, CallInfo, CallState, Presence, Slot};
use super::requests::{Requests, RequestsImage};
use super::timers::{TimerKind, Timers};
use super::user::{IdleUsers, LogEvent, RecentEnded, UserEntry};
use super::{ConnEntry, ConnId, Regrown, Switchboard, SwitchboardConfig, SwitchboardStats};
use crate::id::{CallId, CallIdGenerator, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason, User};
use crate::protocol::{LeaveReason, PushRegistration};

/// The snapshot format this version writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The whole state of a switchboard at one moment, between two inputs:
/// calls with their slots and deadlines, users with their event logs and
/// sequence numbers, the request-id memory, ended calls kept for late
/// commands, idle users, answer data and receipts, counters, and the
/// connections open. Times are unix nanoseconds. Serializes with serde
/// (the journal and snapshot files use JSON).
///
/// Made by [`crate::durable::Durable::snapshot`]; restored by
/// [`crate::durable::Durable::recover`], which refuses a snapshot whose
/// [`SwitchboardSnapshot::version`] it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchboardSnapshot {
    /// The format ([`SNAPSHOT_VERSION`] when written by this version).
    version: u32,
    /// The switchboard's clock (its latest input), unix ns.
    #[serde(default)]
    clock: Option<i64>,
    #[serde(default)]
    infos: Vec<InfoImage>,
    #[serde(default)]
    calls: Vec<CallImage>,
    #[serde(default)]
    users: Vec<UserImage>,
    #[serde(default)]
    conns: Vec<(u64, UserId, DeviceId)>,
    #[serde(default)]
    timers: Vec<(i64, TimerImage, CallId)>,
    #[serde(default)]
    tombstones: Vec<(i64, CallId)>,
    requests: RequestsImage,
    #[serde(default)]
    idle: Vec<(i64, UserId)>,
    #[serde(default)]
    regrown: Vec<(CallId, Vec<RegrownImage>)>,
    #[serde(default)]
    extras: Vec<(CallId, ExtrasImage)>,
    stats: StatsImage,
    /// The first accept of each live answered call (for its record).
    #[serde(default)]
    answered_at: Vec<(CallId, i64)>,
    /// Records of ended calls the owner has not drained yet.
    #[serde(default)]
    records: Vec<super::CallRecord<i64>>,
    /// The settings in force (the journal after the snapshot replays
    /// under them until it records others).
    #[serde(default)]
    settings: Option<crate::durable::Settings>,
    /// Connections whose app said it is in the background.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    background: Vec<u64>,
    /// Push credentials per user, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    push_devices: Vec<(UserId, Vec<(DeviceId, PushRegistration)>)>,
    /// Per live call, the devices its rings were pushed to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pushed: Vec<(CallId, Vec<PushedImage>)>,
}

/// One device a live call pushed its ring to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PushedImage {
    user: UserId,
    device: DeviceId,
    registration: PushRegistration,
    deadline: i64,
}

impl SwitchboardSnapshot {
    /// The format version the snapshot was written in.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Calls held (live and recently ended).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Connections open when the snapshot was taken.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Users held.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// A copy claiming another format version (for tests of version checks).
    #[doc(hidden)]
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct InfoImage {
    call_id: CallId,
    caller: User,
    caller_device: DeviceId,
    call_type: CallType,
    callees: Vec<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custom_data: Option<CustomData>,
    deadline: i64,
    ring_for_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
enum SlotImage {
    Ringing {
        rung: bool,
        deadline: i64,
    },
    Accepted {
        device: DeviceId,
        in_call: bool,
    },
    Ended {
        reason: Reason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateImage {
    /// Ringing; the caller is here (`None`), away until this unix ns, or
    /// left (`left`).
    Ringing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        away_until: Option<i64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        left: bool,
    },
    InProgress {
        caller_in: bool,
    },
    Ended(Reason),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CallImage {
    /// Index into the info table.
    info: u32,
    slots: Vec<SlotImage>,
    state: StateImage,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TimerImage {
    Ring,
    CallerGone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogImage {
    /// Index into the info table.
    Incoming(u32),
    Outgoing(u32),
    IncomingEnded {
        call: CallId,
        reason: Reason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
    },
    CalleeRinging {
        call: CallId,
        callee: UserId,
    },
    CalleeOutcome {
        call: CallId,
        callee: UserId,
        reason: Reason,
    },
    CallEnded {
        call: CallId,
        reason: Reason,
    },
    WithData(Box<LogImage>, CustomData),
    CalleeDelivered(CallId, UserId, DeviceId),
    ParticipantJoined(CallId, UserId, DeviceId),
    ParticipantLeft {
        call: CallId,
        user: UserId,
        reason: LeaveReason,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserImage {
    user: User,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    devices: Vec<(DeviceId, u64)>,
    seq: u64,
    /// The newest events, the last with `seq`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    log: Vec<LogImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    calls: Vec<CallId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recent_ended: Option<Vec<RecentEnded>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_since: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RegrownImage {
    user: UserId,
    rung_again: u32,
    joined_late: u32,
    added: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExtrasImage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    answers: Vec<(usize, CustomData)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    delivered: Vec<(usize, DeviceId)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatsImage {
    invitations: u64,
    /// Indexed by [`Reason::index`]; a shorter list (an older version with
    /// fewer reasons) reads as zeros for the rest.
    outcomes: Vec<u64>,
    glare_merges: u64,
    duplicate_requests: u64,
    ignored_receipts: u64,
}

/// Gives each distinct call info (by identity) an index in the table.
struct InfoTable<'a> {
    ns: &'a dyn Fn(Instant) -> i64,
    index: HashMap<*const CallInfo, u32>,
    infos: Vec<InfoImage>,
}

impl InfoTable<'_> {
    fn index(&mut self, info: &Arc<CallInfo>) -> u32 {
        let ptr = Arc::as_ptr(info);
        if let Some(i) = self.index.get(&ptr) {
            return *i;
        }
        let i = self.infos.len() as u32;
        self.infos.push(InfoImage {
            call_id: info.call_id.clone(),
            caller: info.caller.clone(),
            caller_device: info.caller_device.clone(),
            call_type: info.call_type,
            callees: info.callees.to_vec(),
            custom_data: info.custom_data.clone(),
            deadline: (self.ns)(info.deadline),
            ring_for_ns: u64::try_from(info.ring_for.as_nanos()).unwrap_or(u64::MAX),
        });
        self.index.insert(ptr, i);
        i
    }

    fn log(&mut self, event: &LogEvent) -> LogImage {
        match event {
            LogEvent::Incoming(info) => LogImage::Incoming(self.index(info)),
            LogEvent::Outgoing(info) => LogImage::Outgoing(self.index(info)),
            LogEvent::IncomingEnded {
                call,
                reason,
                device,
            } => LogImage::IncomingEnded {
                call: call.clone(),
                reason: *reason,
                device: device.clone(),
            },
            LogEvent::CalleeRinging { call, callee } => LogImage::CalleeRinging {
                call: call.clone(),
                callee: callee.clone(),
            },
            LogEvent::CalleeOutcome {
                call,
                callee,
                reason,
            } => LogImage::CalleeOutcome {
                call: call.clone(),
                callee: callee.clone(),
                reason: *reason,
            },
            LogEvent::CallEnded { call, reason } => LogImage::CallEnded {
                call: call.clone(),
                reason: *reason,
            },
            LogEvent::WithData(b) => LogImage::WithData(Box::new(self.log(&b.0)), b.1.clone()),
            LogEvent::CalleeDelivered(b) => {
                LogImage::CalleeDelivered(b.0.clone(), b.1.clone(), b.2.clone())
            }
            LogEvent::ParticipantJoined(b) => {
                LogImage::ParticipantJoined(b.0.clone(), b.1.clone(), b.2.clone())
            }
            LogEvent::ParticipantLeft { call, user, reason } => LogImage::ParticipantLeft {
                call: call.clone(),
                user: user.clone(),
                reason: *reason,
            },
        }
    }
}

/// The rebuilt info table, for restoring.
struct Infos<'a> {
    infos: &'a [Arc<CallInfo>],
}

impl Infos<'_> {
    fn get(&self, i: u32) -> Result<Arc<CallInfo>, String> {
        self.infos
            .get(i as usize)
            .cloned()
            .ok_or_else(|| format!("no call info {i}"))
    }

    fn log(&self, image: LogImage) -> Result<LogEvent, String> {
        Ok(match image {
            LogImage::Incoming(i) => LogEvent::Incoming(self.get(i)?),
            LogImage::Outgoing(i) => LogEvent::Outgoing(self.get(i)?),
            LogImage::IncomingEnded {
                call,
                reason,
                device,
            } => LogEvent::IncomingEnded {
                call,
                reason,
                device,
            },
            LogImage::CalleeRinging { call, callee } => LogEvent::CalleeRinging { call, callee },
            LogImage::CalleeOutcome {
                call,
                callee,
                reason,
            } => LogEvent::CalleeOutcome {
                call,
                callee,
                reason,
            },
            LogImage::CallEnded { call, reason } => LogEvent::CallEnded { call, reason },
            LogImage::WithData(inner, data) => {
                LogEvent::WithData(Box::new((self.log(*inner)?, data)))
            }
            LogImage::CalleeDelivered(c, u, d) => LogEvent::CalleeDelivered(Box::new((c, u, d))),
            LogImage::ParticipantJoined(c, u, d) => {
                LogEvent::ParticipantJoined(Box::new((c, u, d)))
            }
            LogImage::ParticipantLeft { call, user, reason } => {
                LogEvent::ParticipantLeft { call, user, reason }
            }
        })
    }
}

impl Switchboard {
    /// The switchboard's clock: the latest input's time (none before the
    /// first input).
    pub(crate) fn clock(&self) -> Option<Instant> {
        self.now
    }

    /// The whole state, times through `ns`. Lists are sorted by id, so two
    /// switchboards in the same state give equal snapshots.
    pub(crate) fn image(&self, ns: &dyn Fn(Instant) -> i64) -> SwitchboardSnapshot {
        let mut table = InfoTable {
            ns,
            index: HashMap::default(),
            infos: Vec::new(),
        };
        // Calls first: the table then lists the calls' current infos in
        // call order, and the log entries sharing them point there.
        let mut call_ids: Vec<&CallId> = self.calls.keys().collect();
        call_ids.sort_unstable();
        let calls: Vec<CallImage> = call_ids
            .into_iter()
            .map(|id| {
                let call = &self.calls[id];
                CallImage {
                    info: table.index(&call.info),
                    slots: call
                        .slots
                        .iter()
                        .map(|s| match s {
                            Slot::Ringing { rung, deadline } => SlotImage::Ringing {
                                rung: *rung,
                                deadline: ns(*deadline),
                            },
                            Slot::Accepted { device, in_call } => SlotImage::Accepted {
                                device: device.clone(),
                                in_call: *in_call,
                            },
                            Slot::Ended { reason, device } => SlotImage::Ended {
                                reason: *reason,
                                device: device.clone(),
                            },
                        })
                        .collect(),
                    state: match call.state {
                        CallState::Ringing { caller } => StateImage::Ringing {
                            away_until: match caller {
                                Presence::Away(at) => Some(ns(at)),
                                Presence::Here | Presence::Left => None,
                            },
                            left: caller == Presence::Left,
                        },
                        CallState::InProgress { caller_in } => StateImage::InProgress { caller_in },
                        CallState::Ended(reason) => StateImage::Ended(reason),
                    },
                }
            })
            .collect();
        let mut user_ids: Vec<&UserId> = self.users.keys().collect();
        user_ids.sort_unstable();
        let users = user_ids
            .into_iter()
            .map(|id| {
                let e = &self.users[id];
                UserImage {
                    user: e.user.clone(),
                    devices: e
                        .devices
                        .iter()
                        .map(|(d, c)| (d.clone(), c.get()))
                        .collect(),
                    seq: e.seq,
                    log: e.log.iter().map(|ev| table.log(ev)).collect(),
                    calls: e.calls.clone(),
                    recent_ended: e.recent_ended_list().map(|r| r.iter().cloned().collect()),
                    idle_since: e.idle_since.map(ns),
                }
            })
            .collect();
        let requests = self.requests.image(&mut |info| table.index(info), ns);
        let mut conns: Vec<(u64, UserId, DeviceId)> = self
            .conns
            .iter()
            .map(|(c, e)| (c.get(), e.user.clone(), e.device.clone()))
            .collect();
        conns.sort_unstable_by_key(|c| c.0);
        let mut regrown: Vec<(CallId, Vec<RegrownImage>)> = self
            .regrown
            .iter()
            .map(|(c, list)| {
                let list = list
                    .iter()
                    .map(|r| RegrownImage {
                        user: r.user.clone(),
                        rung_again: r.rung_again,
                        joined_late: r.joined_late,
                        added: r.added,
                    })
                    .collect();
                (c.clone(), list)
            })
            .collect();
        regrown.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut extras: Vec<(CallId, ExtrasImage)> = self
            .extras
            .iter()
            .map(|(c, x)| {
                let (answers, delivered) = x.parts();
                let image = ExtrasImage {
                    answers: answers.to_vec(),
                    delivered: delivered.to_vec(),
                };
                (c.clone(), image)
            })
            .collect();
        extras.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut answered_at: Vec<(CallId, i64)> = self
            .answered_at
            .iter()
            .map(|(c, t)| (c.clone(), ns(*t)))
            .collect();
        answered_at.sort_unstable();
        let records = self
            .records
            .iter()
            .map(|r| r.clone().map_times(ns))
            .collect();
        let mut background: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.background)
            .map(|(c, _)| c.get())
            .collect();
        background.sort_unstable();
        let mut push_devices: Vec<_> = self
            .push_devices
            .iter()
            .map(|(u, list)| (u.clone(), list.clone()))
            .collect();
        push_devices.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut pushed: Vec<(CallId, Vec<PushedImage>)> = self
            .pushed
            .iter()
            .map(|(c, list)| {
                let list = list
                    .iter()
                    .map(|p| PushedImage {
                        user: p.user.clone(),
                        device: p.device.clone(),
                        registration: p.registration.clone(),
                        deadline: ns(p.deadline),
                    })
                    .collect();
                (c.clone(), list)
            })
            .collect();
        pushed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        SwitchboardSnapshot {
            background,
            push_devices,
            pushed,
            settings: Some(crate::durable::Settings::of(&self.config)),
            answered_at,
            records,
            version: SNAPSHOT_VERSION,
            clock: self.now.map(ns),
            calls,
            users,
            conns,
            timers: self
                .timers
                .iter()
                .map(|(at, kind, c)| {
                    let kind = match kind {
                        TimerKind::Ring => TimerImage::Ring,
                        TimerKind::CallerGone => TimerImage::CallerGone,
                    };
                    (ns(*at), kind, c.clone())
                })
                .collect(),
            tombstones: self
                .tombstones
                .iter()
                .map(|(at, c)| (ns(*at), c.clone()))
                .collect(),
            requests,
            idle: self
                .idle_users
                .notes()
                .map(|(at, u)| (ns(*at), u.clone()))
                .collect(),
            regrown,
            extras,
            stats: StatsImage {
                invitations: self.stats.invitations,
                outcomes: self.stats.outcomes.to_vec(),
                glare_merges: self.stats.glare_merges,
                duplicate_requests: self.stats.duplicate_requests,
                ignored_receipts: self.stats.ignored_receipts,
            },
            infos: table.infos,
        }
    }

    /// A switchboard in the state `image` describes, times through `at`.
    /// The caller checked the version. `Err` names the first inconsistency
    /// (a reference to a call info that is not there, a slot list that
    /// does not match its callees ...).
    pub(crate) fn from_image(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        image: SwitchboardSnapshot,
        at: &dyn Fn(i64) -> Instant,
    ) -> Result<Self, String> {
        let config = match &image.settings {
            Some(settings) => settings.applied_to(&config),
            None => config,
        };
        let mut sb = Switchboard::new(config, ids);
        sb.now = image.clock.map(at);
        let infos: Vec<Arc<CallInfo>> = image
            .infos
            .into_iter()
            .map(|i| {
                Arc::new(CallInfo {
                    call_id: i.call_id,
                    caller: i.caller,
                    caller_device: i.caller_device,
                    call_type: i.call_type,
                    callees: Arc::from(i.callees),
                    custom_data: i.custom_data,
                    deadline: at(i.deadline),
                    ring_for: Duration::from_nanos(i.ring_for_ns),
                })
            })
            .collect();
        let table = Infos { infos: &infos };
        for c in image.calls {
            let info = table.get(c.info)?;
            if c.slots.len() != info.callees.len() {
                return Err(format!(
                    "call {}: {} slots for {} callees",
                    info.call_id,
                    c.slots.len(),
                    info.callees.len()
                ));
            }
            let slots = c
                .slots
                .into_iter()
                .map(|s| match s {
                    SlotImage::Ringing { rung, deadline } => Slot::Ringing {
                        rung,
                        deadline: at(deadline),
                    },
                    SlotImage::Accepted { device, in_call } => Slot::Accepted { device, in_call },
                    SlotImage::Ended { reason, device } => Slot::Ended { reason, device },
                })
                .collect();
            let state = match c.state {
                StateImage::Ringing { away_until, left } => CallState::Ringing {
                    caller: match (away_until, left) {
                        (Some(t), _) => Presence::Away(at(t)),
                        (None, true) => Presence::Left,
                        (None, false) => Presence::Here,
                    },
                },
                StateImage::InProgress { caller_in } => CallState::InProgress { caller_in },
                StateImage::Ended(reason) => CallState::Ended(reason),
            };
            let id = info.call_id.clone();
            sb.calls.insert(id, Box::new(Call { info, slots, state }));
        }
        for u in image.users {
            let mut entry = UserEntry::new(u.user);
            entry.devices = u
                .devices
                .into_iter()
                .map(|(d, c)| (d, ConnId::new(c)))
                .collect();
            entry.seq = u.seq;
            if u.log.len() as u64 > u.seq {
                return Err(format!(
                    "user {}: {} events in the log but seq {}",
                    entry.user.id,
                    u.log.len(),
                    u.seq
                ));
            }
            entry.log = u
                .log
                .into_iter()
                .map(|l| table.log(l))
                .collect::<Result<VecDeque<_>, _>>()?;
            entry.calls = u.calls;
            entry.set_recent_ended(u.recent_ended.map(VecDeque::from));
            entry.idle_since = u.idle_since.map(at);
            sb.users.insert(entry.user.id.clone(), Box::new(entry));
        }
        for (c, user, device) in image.conns {
            let background = image.background.contains(&c);
            sb.conns.insert(
                ConnId::new(c),
                ConnEntry {
                    user,
                    device,
                    background,
                },
            );
        }
        sb.push_devices = image.push_devices.into_iter().collect();
        for (c, list) in image.pushed {
            let list = list
                .into_iter()
                .map(|p| super::push::Pushed {
                    user: p.user,
                    device: p.device,
                    registration: p.registration,
                    deadline: at(p.deadline),
                })
                .collect();
            sb.pushed.insert(c, list);
        }
        let mut timers = Timers::default();
        for (t, kind, c) in image.timers {
            let kind = match kind {
                TimerImage::Ring => TimerKind::Ring,
                TimerImage::CallerGone => TimerKind::CallerGone,
            };
            timers.insert(at(t), kind, c);
        }
        sb.timers = timers;
        sb.tombstones = image
            .tombstones
            .into_iter()
            .map(|(t, c)| (at(t), c))
            .collect();
        sb.requests = Requests::restore(image.requests, &|i| table.get(i).ok(), at)?;
        sb.idle_users =
            IdleUsers::from_notes(image.idle.into_iter().map(|(t, u)| (at(t), u)).collect());
        for (c, list) in image.regrown {
            let list = list
                .into_iter()
                .map(|r| Regrown {
                    user: r.user,
                    rung_again: r.rung_again,
                    joined_late: r.joined_late,
                    added: r.added,
                })
                .collect();
            sb.regrown.insert(c, list);
        }
        for (c, x) in image.extras {
            let slots = sb.calls.get(&c).map_or(0, |call| call.slots.len());
            let indices = x.answers.iter().map(|a| a.0);
            if let Some(i) = indices
                .chain(x.delivered.iter().map(|d| d.0))
                .find(|i| *i >= slots)
            {
                return Err(format!("call {c}: extras for slot {i} of {slots}"));
            }
            sb.extras
                .insert(c, CallExtras::from_parts(x.answers, x.delivered));
        }
        let mut stats = SwitchboardStats {
            invitations: image.stats.invitations,
            glare_merges: image.stats.glare_merges,
            duplicate_requests: image.stats.duplicate_requests,
            ignored_receipts: image.stats.ignored_receipts,
            ..SwitchboardStats::default()
        };
        for (slot, n) in stats.outcomes.iter_mut().zip(image.stats.outcomes) {
            *slot = n;
        }
        sb.stats = stats;
        sb.answered_at = image
            .answered_at
            .into_iter()
            .map(|(c, t)| (c, at(t)))
            .collect();
        sb.records = image
            .records
            .into_iter()
            .map(|r| r.map_times(&at))
            .collect();
        Ok(sb)
    }
}

impl Switchboard {
    /// Every open connection ends at `now` (the server restarted: they died
    /// with it), in connection order, *without* moving the clock or firing
    /// timers: deadlines that passed meanwhile fire at the next input, once.
    /// A caller's ringing call gets the caller-gone grace from `now`.
    /// Returns how many connections there were.
    pub(crate) fn drop_connections(&mut self, now: Instant) -> usize {
        let now = self.now.map_or(now, |clock| clock.max(now));
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in &conns {
            self.forget_connection(now, *conn);
        }
        conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SequentialCallIds;
    use crate::protocol::{Command, InviteRequest};

    #[allow(clippy::disallowed_methods)] // the origin of test time
    fn origin() -> Instant {
        Instant::now()
    }

    /// A switchboard where alice (device `a`, connection 1) invited bob
    /// (offline): one pending invitation.
    fn alice_invites_bob(t: Instant) -> Switchboard {
        let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
        let alice = User::new(UserId::new("alice").unwrap(), "A").unwrap();
        sb.connect(
            t,
            ConnId::new(1),
            alice,
            DeviceId::new("a").unwrap(),
            None,
            None,
        );
        let invite = InviteRequest::new(vec![UserId::new("bob").unwrap()], crate::CallType::Voice);
        let id = crate::RequestId::new("r").unwrap();
        sb.handle_command(t, ConnId::new(1), id, Command::Invite(invite))
            .unwrap();
        sb
    }

    /// A pending invitation shares one `CallInfo` between the call, the
    /// callee's and the caller's log entries and the invite's remembered
    /// answer; a restored one shares it too (not four copies).
    #[test]
    fn restoring_keeps_call_infos_shared() {
        let t = origin();
        let mut sb = alice_invites_bob(t);
        while sb.poll_output().is_some() {}
        let ns = |at: Instant| at.saturating_duration_since(t).as_nanos() as i64;
        let image = sb.image(&ns);
        assert_eq!(image.infos.len(), 1, "one info, referred to by index");
        let json = serde_json::to_string(&image).unwrap();
        let back: SwitchboardSnapshot = serde_json::from_str(&json).unwrap();
        let at = |n: i64| t + Duration::from_nanos(n as u64);
        let restored = Switchboard::from_image(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            back,
            &at,
        )
        .unwrap();
        let call = restored.calls.values().next().unwrap();
        let shared = |user: &str| {
            let e = &restored.users[&UserId::new(user).unwrap()];
            e.log.iter().any(|ev| match ev {
                LogEvent::Incoming(i) | LogEvent::Outgoing(i) => Arc::ptr_eq(i, &call.info),
                _ => false,
            })
        };
        assert!(shared("bob") && shared("alice"));
        // Call, two log entries, the remembered answer.
        assert_eq!(Arc::strong_count(&call.info), 4);
        assert_eq!(restored.image(&ns), image);
    }

    #[test]
    fn inconsistent_snapshots_are_refused_not_panicked_on() {
        let t = origin();
        let sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
        let ns = |at: Instant| at.saturating_duration_since(t).as_nanos() as i64;
        let at = |n: i64| t + Duration::from_nanos(n as u64);
        let mut image = sb.image(&ns);
        image.calls.push(CallImage {
            info: 3,
            slots: Vec::new(),
            state: StateImage::InProgress { caller_in: true },
        });
        let err = Switchboard::from_image(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            image,
            &at,
        )
        .unwrap_err();
        assert_eq!(err, "no call info 3");
        let mut image = sb.image(&ns);
        image.extras.push((
            CallId::new("nope").unwrap(),
            ExtrasImage {
                answers: Vec::new(),
                delivered: vec![(0, DeviceId::new("d").unwrap())],
            },
        ));
        let err = Switchboard::from_image(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            image,
            &at,
        )
        .unwrap_err();
        assert!(err.contains("extras for slot 0 of 0"), "{err}");

        // An invite answer for more callees than its packed statuses hold.
        let sb = alice_invites_bob(t);
        let mut image = sb.image(&ns);
        for i in 0..22 {
            let u = User::new(UserId::new(format!("x{i}")).unwrap(), "x").unwrap();
            image.infos[0].callees.push(u);
            image.calls[0].slots.push(SlotImage::Ended {
                reason: Reason::Busy,
                device: None,
            });
        }
        let err = Switchboard::from_image(
            SwitchboardConfig::default(),
            SequentialCallIds::default(),
            image,
            &at,
        )
        .unwrap_err();
        assert!(err.contains("an invite answer for 23 callees"), "{err}");
    }
}
