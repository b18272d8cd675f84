//! A connection's bounded outbound queue: the hub pushes, the connection
//! task pops.
//!
//! A tokio `mpsc` channel did this before, at ~1.1 KB per connection
//! whether it ever carried a message or not (two cache-padded halves and a
//! first block of 32 slots, allocated up front). Every idle connection
//! paid it. This is a mutex-guarded deque and a `Notify`: ~130 bytes, plus
//! the deque's buffer once a message has been queued. One producer (the
//! hub) and one consumer, so the lock is never contended for long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// `cap` messages are waiting: the client does not read.
    Full,
    /// The connection is gone (or was closed by the hub).
    Closed,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Outbound>,
    cap: usize,
    closed: bool,
}

/// The queue. Shared (`Arc`) by the hub's link and the connection task.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

impl Outbox {
    /// An empty queue holding at most `cap` messages.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                cap: cap.max(1),
                closed: false,
            }),
            ready: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message, unless the queue is full or closed.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        {
            let mut s = self.state();
            if s.closed {
                return Err(PushError::Closed);
            }
            if s.items.len() >= s.cap {
                return Err(PushError::Full);
            }
            s.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Closes the queue; `last` (a close reason) is queued first, even
    /// past the cap. The consumer drains what is queued, then sees `None`.
    pub fn close(&self, last: Option<Outbound>) {
        {
            let mut s = self.state();
            if s.closed {
                return;
            }
            s.closed = true;
            s.items.extend(last);
        }
        self.ready.notify_one();
    }

    /// The next message, if one is queued.
    pub fn try_pop(&self) -> Option<Outbound> {
        self.state().items.pop_front()
    }

    /// The next message; `None` once the queue is closed and drained.
    /// Cancel-safe: a message is only taken in the poll that returns it.
    pub async fn recv(&self) -> Option<Outbound> {
        loop {
            {
                let mut s = self.state();
                if let Some(item) = s.items.pop_front() {
                    return Some(item);
                }
                if s.closed {
                    return None;
                }
            }
            // A push between the check and here left a permit: no lost wake-up.
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invitation_core::protocol::CloseReason;

    fn close(reason: CloseReason) -> Outbound {
        Outbound::Close(reason)
    }

    #[tokio::test]
    async fn bounded_fifo_then_closed() {
        let q = Outbox::new(2);
        q.push(close(CloseReason::Replaced)).unwrap();
        q.push(close(CloseReason::TooSlow)).unwrap();
        assert_eq!(
            q.push(close(CloseReason::TokenExpired)),
            Err(PushError::Full)
        );
        assert!(matches!(
            q.recv().await,
            Some(Outbound::Close(CloseReason::Replaced))
        ));
        q.close(Some(close(CloseReason::ShuttingDown)));
        assert_eq!(q.push(close(CloseReason::Replaced)), Err(PushError::Closed));
        assert!(matches!(
            q.try_pop(),
            Some(Outbound::Close(CloseReason::TooSlow))
        ));
        assert!(matches!(
            q.recv().await,
            Some(Outbound::Close(CloseReason::ShuttingDown))
        ));
        assert!(q.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_push() {
        let q = Outbox::new(4);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.recv().await }
        });
        tokio::task::yield_now().await;
        q.push(close(CloseReason::Replaced)).unwrap();
        assert!(matches!(
            waiter.await.unwrap(),
            Some(Outbound::Close(CloseReason::Replaced))
        ));
    }
}
