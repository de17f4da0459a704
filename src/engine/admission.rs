//! Admission control for sandbox starts: at most N sandboxes start at once (container start
//! until the kernel answers); further creates wait their turn in arrival order, up to a deadline,
//! instead of all starting together and missing their readiness deadlines on a busy machine.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How many creates are starting and how many wait for a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartQueueState {
    pub starting: usize,
    pub waiting: usize,
}

/// Why a create got no turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoTurn {
    /// The deadline passed while it waited.
    TimedOut,
    /// The queue was closed (the server is stopping).
    Closed,
}

/// The queue of creates that wait to start.
pub(crate) struct StartQueue {
    /// Tokio's semaphore is fair: permits go out in the order they were asked for.
    turns: Arc<Semaphore>,
    wait_limit: Duration,
    state: watch::Sender<StartQueueState>,
}

/// The right to start one sandbox; given back when dropped.
pub(crate) struct StartTurn {
    _permit: OwnedSemaphorePermit,
    state: watch::Sender<StartQueueState>,
}

impl StartQueue {
    pub(crate) fn new(concurrent_starts: usize, wait_limit: Duration) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(concurrent_starts.max(1))),
            wait_limit,
            state: watch::Sender::new(StartQueueState::default()),
        }
    }

    /// Waits for a turn to start a sandbox, at most the configured time. Dropping the future
    /// leaves the queue and takes nothing.
    pub(crate) async fn turn(&self) -> Result<StartTurn, NoTurn> {
        let waiting = Waiting::join(&self.state);
        let permit = tokio::time::timeout(self.wait_limit, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| NoTurn::TimedOut)?
            .map_err(|_| NoTurn::Closed)?;
        drop(waiting);
        self.state.send_modify(|state| state.starting += 1);
        Ok(StartTurn {
            _permit: permit,
            state: self.state.clone(),
        })
    }

    /// Stops handing out turns: every waiting and later create gets [`NoTurn::Closed`].
    pub(crate) fn close(&self) {
        self.turns.close();
    }

    /// Follows the queue's state (for metrics, and for tests that wait on it).
    pub(crate) fn watch(&self) -> watch::Receiver<StartQueueState> {
        self.state.subscribe()
    }

    pub(crate) fn wait_limit(&self) -> Duration {
        self.wait_limit
    }
}

impl Drop for StartTurn {
    fn drop(&mut self) {
        self.state.send_modify(|state| state.starting -= 1);
    }
}

/// Counts one waiting create for as long as it lives, however its wait ends.
struct Waiting<'a>(&'a watch::Sender<StartQueueState>);

impl<'a> Waiting<'a> {
    fn join(state: &'a watch::Sender<StartQueueState>) -> Self {
        state.send_modify(|state| state.waiting += 1);
        Self(state)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|state| state.waiting -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_go_out_in_arrival_order_and_come_back_when_dropped() {
        let queue = Arc::new(StartQueue::new(1, Duration::from_secs(60)));
        let first = queue.turn().await.expect("a free turn");
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut state = queue.watch();
        for n in 0..3 {
            let queue = queue.clone();
            let order = order_tx.clone();
            tokio::spawn(async move {
                let turn = queue.turn().await.expect("a turn");
                order.send(n).expect("the test listens");
                drop(turn);
            });
            // Each waits before the next arrives, so arrival order is known.
            state
                .wait_for(|state| state.waiting == n + 1)
                .await
                .expect("queue alive");
        }
        assert_eq!(
            *queue.watch().borrow(),
            StartQueueState {
                starting: 1,
                waiting: 3
            }
        );
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(order_rx.recv().await.expect("a create ran"));
        }
        assert_eq!(order, [0, 1, 2]);
        state
            .wait_for(|state| *state == StartQueueState::default())
            .await
            .expect("queue alive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_is_refused_and_leaves_the_queue() {
        let queue = StartQueue::new(1, Duration::from_secs(5));
        let _held = queue.turn().await.expect("a free turn");
        assert_eq!(queue.turn().await.err(), Some(NoTurn::TimedOut));
        assert_eq!(queue.watch().borrow().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_takes_nothing() {
        let queue = StartQueue::new(1, Duration::from_secs(60));
        let held = queue.turn().await.expect("a free turn");
        let gave_up = tokio::time::timeout(Duration::from_secs(1), queue.turn()).await;
        assert!(gave_up.is_err(), "the wait should still be pending");
        assert_eq!(queue.watch().borrow().waiting, 0);
        drop(held);
        // The one turn is free again: nobody who left took it.
        let _next = queue.turn().await.expect("the turn came back");
        assert_eq!(queue.watch().borrow().starting, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_refuses_waiting_creates() {
        let queue = Arc::new(StartQueue::new(1, Duration::from_secs(60)));
        let _held = queue.turn().await.expect("a free turn");
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn().await.err() })
        };
        queue
            .watch()
            .wait_for(|state| state.waiting == 1)
            .await
            .expect("queue alive");
        queue.close();
        assert_eq!(waiter.await.expect("waiter ran"), Some(NoTurn::Closed));
    }
}
