//! What the engine hands out in limited amounts: sandbox slots (the server's cap on live
//! sandboxes and each tenant's quota, taken atomically before a create starts and given back if
//! it fails, so concurrent creates never overrun either), and the spool budget that uploads in
//! progress share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::error::EngineError;
use super::tenant::Tenant;

/// Live sandboxes, as the caller counts them: all of them, and the tenant's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Live {
    pub total: usize,
    pub tenant: usize,
}

/// The caps, and the creates under way that hold a slot.
#[derive(Debug)]
pub(super) struct Quota {
    global: usize,
    per_tenant: usize,
    pending: Mutex<HashMap<Tenant, usize>>,
}

/// A slot taken for one create. Dropped, it is given back; [`Slot::fill`] turns it into a live
/// sandbox in one step, so the sandbox is never counted twice or not at all.
#[must_use = "a slot is given back when dropped"]
pub(super) struct Slot<'a> {
    quota: &'a Quota,
    tenant: Tenant,
}

impl Quota {
    pub(super) fn new(global: usize, per_tenant: usize) -> Self {
        Self {
            global,
            per_tenant: per_tenant.min(global),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Tenant, usize>> {
        // The map holds plain counts, consistent after every statement: a panic elsewhere
        // cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `tenant`, or says which limit refuses it. `live` counts the live
    /// sandboxes; it is called with the slots locked, so no other create can slip in between.
    pub(super) fn take(
        &self,
        tenant: &Tenant,
        live: impl FnOnce(&Tenant) -> Live,
    ) -> Result<Slot<'_>, EngineError> {
        let mut pending = self.pending();
        let counted = live(tenant);
        let pending_total: usize = pending.values().sum();
        let pending_tenant = pending.get(tenant).copied().unwrap_or(0);
        if counted.total + pending_total >= self.global {
            return Err(EngineError::TooManySandboxes { limit: self.global });
        }
        if counted.tenant + pending_tenant >= self.per_tenant {
            return Err(EngineError::TenantQuotaReached {
                limit: self.per_tenant,
            });
        }
        *pending.entry(tenant.clone()).or_insert(0) += 1;
        Ok(Slot {
            quota: self,
            tenant: tenant.clone(),
        })
    }

    fn give_back(&self, pending: &mut HashMap<Tenant, usize>, tenant: &Tenant) {
        if let Some(count) = pending.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(tenant);
            }
        }
    }
}

impl Slot<'_> {
    /// Makes the sandbox live (`insert` adds it to the table) and releases the slot, both while
    /// the slots are locked.
    pub(super) fn fill(self, insert: impl FnOnce()) {
        let quota = self.quota;
        let tenant = self.tenant.clone();
        std::mem::forget(self);
        let mut pending = quota.pending();
        insert();
        quota.give_back(&mut pending, &tenant);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut pending = self.quota.pending();
        self.quota.give_back(&mut pending, &self.tenant);
    }
}

/// The bytes that all uploads in progress may hold in temporary files together.
#[derive(Debug)]
pub(super) struct SpoolBudget {
    limit: u64,
    held: AtomicU64,
}

/// What one upload holds of the budget; given back when dropped (with its temporary file).
#[derive(Debug)]
pub(super) struct SpoolShare<'a> {
    budget: &'a SpoolBudget,
    held: u64,
}

impl SpoolBudget {
    pub(super) fn new(limit: u64) -> Self {
        Self {
            limit,
            held: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub(super) fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    pub(super) fn share(&self) -> SpoolShare<'_> {
        SpoolShare {
            budget: self,
            held: 0,
        }
    }
}

impl SpoolShare<'_> {
    /// Takes `bytes` more, or refuses when the budget would pass its limit.
    pub(super) fn grow(&mut self, bytes: u64) -> Result<(), EngineError> {
        let limit = self.budget.limit;
        self.budget
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map_err(|_| EngineError::SpoolFull { limit })?;
        self.held += bytes;
        Ok(())
    }
}

impl Drop for SpoolShare<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn key(name: &str) -> Tenant {
        Tenant::Key(name.into())
    }

    #[test]
    fn pending_creates_count_against_both_limits() {
        let quota = Quota::new(3, 2);
        let live = RefCell::new(Vec::<Tenant>::new());
        let count = |tenant: &Tenant| {
            let live = live.borrow();
            Live {
                total: live.len(),
                tenant: live.iter().filter(|t| *t == tenant).count(),
            }
        };
        let a1 = quota.take(&key("a"), count).expect("a1");
        let a2 = quota.take(&key("a"), count).expect("a2");
        assert!(matches!(
            quota.take(&key("a"), count),
            Err(EngineError::TenantQuotaReached { limit: 2 })
        ));
        let b1 = quota.take(&key("b"), count).expect("b1");
        assert!(matches!(
            quota.take(&key("b"), count),
            Err(EngineError::TooManySandboxes { limit: 3 })
        ));
        // A failed create gives its slot back; a filled one keeps counting as live.
        drop(a2);
        a1.fill(|| live.borrow_mut().push(key("a")));
        b1.fill(|| live.borrow_mut().push(key("b")));
        let a3 = quota.take(&key("a"), count).expect("a again");
        assert!(quota.take(&key("c"), count).is_err(), "3 of 3 taken");
        drop(a3);
        assert!(quota.pending().is_empty());
    }

    #[test]
    fn uploads_share_one_spool_budget() {
        let budget = SpoolBudget::new(100);
        let mut first = budget.share();
        first.grow(60).expect("60 of 100");
        let mut second = budget.share();
        assert!(matches!(
            second.grow(50),
            Err(EngineError::SpoolFull { limit: 100 })
        ));
        second.grow(40).expect("the rest");
        drop(first);
        second.grow(60).expect("given back");
        drop(second);
        assert_eq!(budget.held.load(Ordering::SeqCst), 0);
    }
}
