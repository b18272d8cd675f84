//! The switchboard's settings: limits, timeouts, history, and what happens
//! to invitations for busy or offline callees.

use std::time::Duration;

use super::ContactPolicy;
use crate::model::{DEFAULT_MAX_CUSTOM_DATA, RING_TIMEOUT_BOUNDS_S};

/// What happens to an invitation for a callee who is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BusyPolicy {
    /// Reject at once with outcome `busy` (the origin's behaviour). Busy
    /// means: in an accepted call, inviting someone (ringing outgoing), or
    /// already ringing for another invitation (so nobody rings twice).
    #[default]
    RejectBusy,
    /// Ring anyway (call waiting); the app decides.
    RingAnyway,
}

/// Who may end a call for everyone with `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndPolicy {
    /// Only the caller, while in the call (the default).
    #[default]
    CallerOnly,
    /// Anyone in the call.
    AnyParticipant,
}

/// What happens to an invitation for a callee with no device online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OfflinePolicy {
    /// Hold it until the ring timeout; a device that connects in time gets it.
    #[default]
    Hold,
    /// Reject at once with outcome `unreachable`.
    Reject,
}

/// Switchboard settings. The defaults are the product's (README, docs/operations.md).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SwitchboardConfig {
    /// Most callees per invitation (9).
    pub max_callees: usize,
    /// Ring timeout when the invite names none (60 s).
    pub default_ring_timeout_s: u32,
    /// Smallest ring timeout accepted (1 s; at least
    /// [`RING_TIMEOUT_BOUNDS_S`]'s start).
    pub min_ring_timeout_s: u32,
    /// Largest ring timeout accepted (600 s; at most
    /// [`RING_TIMEOUT_BOUNDS_S`]'s end).
    pub max_ring_timeout_s: u32,
    /// Largest custom data, bytes (8 KiB).
    pub max_custom_data: usize,
    /// Busy handling.
    pub busy_policy: BusyPolicy,
    /// Offline handling.
    pub offline_policy: OfflinePolicy,
    /// How long a ringing invitation survives its caller's device vanishing (15 s).
    pub caller_gone_grace: Duration,
    /// Events kept per user for resume (300); older gaps get a full `sync`.
    pub resume_buffer: usize,
    /// How long ended calls and request ids are remembered (10 min), so late
    /// duplicates get the same answer; also how long a user record with no
    /// device and no live call is kept (for resume) before it is forgotten,
    /// whether the user ever connected or was only named as a callee.
    pub retention: Duration,
    /// Most ended calls remembered at once; the oldest are forgotten first.
    pub max_tombstones: usize,
    /// Most request ids remembered at once; the oldest are forgotten first.
    pub max_remembered_requests: usize,
    /// Most request ids remembered per user (1,000): past it, that user's
    /// oldest answer is forgotten, so no user can push others' out. Only
    /// answers to commands that changed something are remembered.
    pub max_remembered_requests_per_user: usize,
    /// Ended calls listed per user in `sync` (32).
    pub recent_ended_per_user: usize,
    /// Who may call whom, asked for every callee of every invite (default:
    /// anyone may call anyone).
    pub contact_policy: ContactPolicy,
    /// Hide callees' presence from callers (off by default): the invite's
    /// reply says `ringing` for every callee whether online, offline, held
    /// or not, and no `callee_ringing` receipt is sent; the caller learns
    /// only outcomes (accepted, declined, timeout ...). Outcomes decided at
    /// invite time (`busy` under [`BusyPolicy::RejectBusy`], `unreachable`
    /// under [`OfflinePolicy::Reject`]) still arrive at once: pair it with
    /// `RingAnyway` and `Hold` to hide those too.
    pub hide_callee_status: bool,
    /// Device receipts (`received`) kept per callee of a call (10): one per
    /// device, so at most as many as the devices a user may have online
    /// (the server sets it from its device cap). Past it, more receipts for
    /// that callee are ignored.
    pub max_receipts_per_callee: usize,
    /// Who may end a call for everyone (`end`): by default the caller only.
    pub end_policy: EndPolicy,
    /// Keep a [`CallRecord`](super::CallRecord) of every call that ends,
    /// for the owner to drain with
    /// [`Switchboard::poll_record`](super::Switchboard::poll_record) (off
    /// by default: an owner that keeps no records pays nothing). When on,
    /// the owner must drain them: the switchboard never drops one.
    pub call_records: bool,
    /// Produce a [`PushNotice`](super::PushNotice) for the owner to send
    /// whenever a user with registered push credentials is rung while none
    /// of their devices is connected in the foreground, and a "stop
    /// ringing" one when that ring ends (off by default: an owner with no
    /// push gateway pays nothing). When on, the owner drains them with
    /// [`Switchboard::poll_push`](super::Switchboard::poll_push) after
    /// every input.
    pub push: bool,
    /// Devices with push credentials kept per user (10): registering one
    /// more forgets the user's oldest registration.
    pub max_push_devices: usize,
}

impl Default for SwitchboardConfig {
    fn default() -> Self {
        Self {
            max_callees: 9,
            default_ring_timeout_s: 60,
            min_ring_timeout_s: *RING_TIMEOUT_BOUNDS_S.start(),
            max_ring_timeout_s: *RING_TIMEOUT_BOUNDS_S.end(),
            max_custom_data: DEFAULT_MAX_CUSTOM_DATA,
            busy_policy: BusyPolicy::RejectBusy,
            offline_policy: OfflinePolicy::Hold,
            caller_gone_grace: Duration::from_secs(15),
            resume_buffer: 300,
            retention: Duration::from_secs(600),
            max_tombstones: 1_000_000,
            max_remembered_requests: 1_000_000,
            max_remembered_requests_per_user: 1_000,
            recent_ended_per_user: 32,
            contact_policy: ContactPolicy::anyone(),
            hide_callee_status: false,
            max_receipts_per_callee: 10,
            end_policy: EndPolicy::CallerOnly,
            call_records: false,
            push: false,
            max_push_devices: 10,
        }
    }
}
