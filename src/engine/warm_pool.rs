//! The warm pool's state: sandboxes of the default configuration started ahead of any request,
//! their kernels ready, waiting to be claimed. Each is claimed once, then it is an ordinary
//! sandbox of its caller; the engine's side (claiming, refilling, reattaching) is in
//! [`super::pooling`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::firewall::Firewall;
use super::sandbox::{Sandbox, SandboxInfo};
use crate::backend::ContainerInfo;

/// A started, unclaimed sandbox.
pub(crate) struct PoolMember {
    /// Its container as created (labels of no owner, the pool's name).
    pub(crate) container: ContainerInfo,
    pub(crate) image: String,
    pub(crate) firewall: Firewall,
    /// Holds the kernel connection (and sees whether it still answers) until a claim takes it
    /// over; never handed to anyone itself.
    pub(crate) sandbox: Arc<Sandbox>,
}

/// What a create made.
pub(crate) enum Created {
    /// A sandbox of its caller's, in the engine's table.
    Handed(SandboxInfo),
    /// A warm-pool member, not in the table.
    Pooled(PoolMember),
}

/// What became of a pool container at reattach.
pub(crate) enum Reattached {
    /// Unclaimed, back in the pool.
    Pooled,
    /// Claimed: the container with its binding laid over its labels.
    Bound(ContainerInfo),
    /// Its binding could not be read now; neither adopted nor removed.
    LeftAlone,
}

/// The members waiting to be claimed, oldest first.
#[derive(Default)]
pub(crate) struct WarmPool {
    members: Mutex<VecDeque<PoolMember>>,
    /// How many members wait, for those who watch it (the metrics, tests).
    ready: watch::Sender<usize>,
    /// Wakes the refiller when a member was taken or removed.
    wanted: Notify,
    /// When a caller last took a member: the refill keeps off the machine for a while after.
    last_claim: Mutex<Option<Instant>>,
}

impl WarmPool {
    fn members(&self) -> MutexGuard<'_, VecDeque<PoolMember>> {
        // Every change is one step: a poisoned lock still holds a consistent queue.
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.members().len()
    }

    /// Adds a member that is ready.
    pub(crate) fn push(&self, member: PoolMember) {
        let mut members = self.members();
        members.push_back(member);
        self.ready.send_replace(members.len());
    }

    /// Adds a member if the pool holds fewer than `cap`; returns whether it did.
    pub(crate) fn push_within(&self, member: PoolMember, cap: usize) -> bool {
        let mut members = self.members();
        if members.len() >= cap {
            return false;
        }
        members.push_back(member);
        self.ready.send_replace(members.len());
        true
    }

    /// Each member's container id and sandbox, leaving them in the pool.
    pub(crate) fn sandboxes(&self) -> Vec<(String, Arc<Sandbox>)> {
        self.members()
            .iter()
            .map(|member| {
                (
                    member.container.container_id.clone(),
                    member.sandbox.clone(),
                )
            })
            .collect()
    }

    /// Takes the oldest member, if any, and wakes the refiller.
    pub(crate) fn take(&self) -> Option<PoolMember> {
        let mut members = self.members();
        let member = members.pop_front();
        self.ready.send_replace(members.len());
        if member.is_some() {
            if let Ok(mut last) = self.last_claim.lock() {
                *last = Some(Instant::now());
            }
            self.wanted.notify_one();
        }
        member
    }

    /// How long after the last claim a refill should still wait so that it is `settle` past
    /// it: zero when no claim is that recent.
    pub(crate) fn settling_for(&self, settle: Duration) -> Duration {
        self.last_claim
            .lock()
            .ok()
            .and_then(|last| *last)
            .map_or(Duration::ZERO, |last| settle.saturating_sub(last.elapsed()))
    }

    /// Takes every member for which `stale` holds.
    pub(crate) fn take_where(&self, stale: impl Fn(&PoolMember) -> bool) -> Vec<PoolMember> {
        let mut members = self.members();
        let (gone, kept): (Vec<_>, Vec<_>) = members.drain(..).partition(|member| stale(member));
        members.extend(kept);
        self.ready.send_replace(members.len());
        if !gone.is_empty() {
            self.wanted.notify_one();
        }
        gone
    }

    /// Takes every member.
    pub(crate) fn drain(&self) -> Vec<PoolMember> {
        self.take_where(|_| true)
    }

    /// Follows how many members wait.
    pub(crate) fn watch(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// Resolves when a member was taken or removed since the last call.
    pub(crate) async fn member_wanted(&self) {
        self.wanted.notified().await
    }
}
