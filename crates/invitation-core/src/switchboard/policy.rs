//! Who may call whom: a hook the switchboard consults for every callee of
//! every invite.

use std::fmt;
use std::sync::Arc;

use crate::id::UserId;

type Rule = dyn Fn(&UserId, &UserId) -> bool + Send + Sync;

/// Decides whether a caller may invite a callee. The default,
/// [`ContactPolicy::anyone`], lets anyone call anyone (any user id that
/// passes authentication can invite any user id); an app with contact
/// lists, blocks or tenants plugs its rule in with [`ContactPolicy::new`].
///
/// An invite naming any callee the rule refuses is refused as a whole with
/// [`CommandError::Forbidden`](crate::CommandError::Forbidden) before
/// anything is created, whether or not that user exists or is online, so
/// the answer reveals nothing about the callee. The rule runs inside the
/// switchboard's single thread: keep it fast (a set lookup), never
/// blocking.
#[derive(Clone, Default)]
pub struct ContactPolicy(Option<Arc<Rule>>);

impl ContactPolicy {
    /// Anyone may call anyone (the default).
    pub fn anyone() -> Self {
        Self(None)
    }

    /// `rule(caller, callee)` says whether `caller` may invite `callee`.
    pub fn new(rule: impl Fn(&UserId, &UserId) -> bool + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(rule)))
    }

    /// Does the policy let `caller` invite `callee`?
    pub fn allows(&self, caller: &UserId, callee: &UserId) -> bool {
        self.0.as_ref().is_none_or(|rule| rule(caller, callee))
    }
}

impl fmt::Debug for ContactPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            None => "ContactPolicy::anyone",
            Some(_) => "ContactPolicy(custom rule)",
        })
    }
}
