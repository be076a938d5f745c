//! [`PolicyCache`]: every consumer's in-memory copy of the enabled policies and the global switch.
//!
//! Design constraints:
//! - Matching must not cost a database round trip per event: policies are matched from memory.
//! - Changes reach every consumer within about `refresh_interval`: the store bumps a single-row
//!   generation counter in the same transaction as every policy or settings write, and each consumer
//!   reads that one row every interval, reloading everything only when it changed.
//! - A policy write is seen by the next event, not only within `refresh_interval`: ingest stamps
//!   each event with the store's generation read after the event arrived (and the matching stage
//!   stamps each task with the generation it matched against). Before matching an event or
//!   delivering a task, [`PolicyCache::catch_up`] reloads when the stamp is ahead of the copy; the
//!   reloads of concurrent messages are made once. So an event accepted after a write's `2xx` is
//!   matched against that write or a later state (docs/delivery.md, "Policy changes").
//! - A database outage keeps the last good copy in use (and counts the failed reloads); deliveries go
//!   on. A message whose stamp is ahead of the copy waits for the database instead (the caller's
//!   outage handling), since matching it against an older copy could drop it silently.
//! - The copy only moves forward: a reload that read an older generation than the copy's (a slow
//!   periodic refresh racing a catch-up) is discarded.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use regrelay_events::RegistryEvent;
use regrelay_history::policy::{CompiledFilters, Policy, Target};
use regrelay_history::{Database, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::telemetry::ConsumerMetrics;
use regrelay_producer::task::target_fingerprint;

use crate::request::{vendor_target, VendorTarget};

/// A policy with its filters compiled once, and its chat and template targets built once (their
/// templates compiled).
pub struct CachedPolicy {
    pub policy: Policy,
    filters: CompiledFilters,
    /// By target index; `None` for Harbor's types, and for one that no longer validates (the
    /// delivery builds it again and dead-letters it with the error).
    vendors: Vec<Option<VendorTarget>>,
}

impl CachedPolicy {
    /// The built chat or template target at `index`, when it is one.
    pub(crate) fn vendor(&self, index: usize) -> Option<&VendorTarget> {
        self.vendors.get(index).and_then(Option::as_ref)
    }

    fn matches(&self, event: &RegistryEvent) -> bool {
        self.policy.event_types.contains(&event.event_type())
            && self
                .filters
                .matches(event.repository(), event.project(), event.tags())
    }
}

/// One consistent snapshot of the policies.
#[derive(Default)]
pub struct PolicySet {
    by_id: HashMap<i64, Arc<CachedPolicy>>,
    /// Project-scoped policies by project name (the event's namespace).
    by_project: HashMap<String, Vec<Arc<CachedPolicy>>>,
    /// Policies that match every project.
    system_wide: Vec<Arc<CachedPolicy>>,
    /// The global switch (Harbor's `notification_enable`).
    pub notifications_enabled: bool,
    pub generation: i64,
}

impl PolicySet {
    pub fn build(policies: Vec<Policy>, notifications_enabled: bool, generation: i64) -> Self {
        let mut set = PolicySet {
            notifications_enabled,
            generation,
            ..PolicySet::default()
        };
        for policy in policies {
            let filters = match CompiledFilters::compile(&policy.filters) {
                Ok(filters) => filters,
                Err(error) => {
                    // Validated when written; a stored pattern that no longer compiles is skipped, loudly.
                    tracing::error!(message = "Policy filter does not compile; policy skipped.", policy_id = policy.id, error = %error);
                    continue;
                }
            };
            let vendors = policy
                .targets
                .iter()
                .enumerate()
                .map(|(index, target)| match vendor_target(target)? {
                    Ok(vendor) => Some(vendor),
                    Err(error) => {
                        // Validated when written; one that no longer builds is dead-lettered with
                        // this error when delivered.
                        tracing::error!(message = "Policy target is invalid; its deliveries will be dead-lettered.", policy_id = policy.id, target_index = index, error = %error);
                        None
                    }
                })
                .collect();
            let cached = Arc::new(CachedPolicy {
                policy,
                filters,
                vendors,
            });
            match &cached.policy.project {
                Some(project) => set
                    .by_project
                    .entry(project.name.clone())
                    .or_default()
                    .push(cached.clone()),
                None => set.system_wide.push(cached.clone()),
            }
            set.by_id.insert(cached.policy.id, cached);
        }
        set
    }

    /// The enabled policies an event triggers: its project's and the system-wide ones.
    pub fn matching(&self, event: &RegistryEvent) -> Vec<Arc<CachedPolicy>> {
        let project = self
            .by_project
            .get(event.project())
            .map(Vec::as_slice)
            .unwrap_or_default();
        project
            .iter()
            .chain(self.system_wide.iter())
            .filter(|p| p.policy.enabled && p.matches(event))
            .cloned()
            .collect()
    }

    /// The target a delivery task names: by index, checked against the fingerprint; if the list was
    /// reordered, by fingerprint alone. `None` when the policy or the target is gone.
    pub fn target(
        &self,
        policy_id: i64,
        index: usize,
        fingerprint: &str,
    ) -> Option<(Arc<CachedPolicy>, usize)> {
        let cached = self.by_id.get(&policy_id)?;
        let targets: &[Target] = &cached.policy.targets;
        let found = match targets.get(index) {
            Some(t) if target_fingerprint(&t.address) == fingerprint => Some(index),
            _ => targets
                .iter()
                .position(|t| target_fingerprint(&t.address) == fingerprint),
        }?;
        Some((cached.clone(), found))
    }

    /// The policy with `id`, enabled or not.
    pub fn policy(&self, id: i64) -> Option<Arc<CachedPolicy>> {
        self.by_id.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

pub struct PolicyCache {
    db: Database,
    current: RwLock<Arc<PolicySet>>,
    /// Follows `notifications_enabled`, so the delivery stage can pause and resume without polling.
    enabled: watch::Sender<bool>,
    metrics: ConsumerMetrics,
    /// Held while reloading, so the many messages that arrive behind one policy write cause one
    /// reload, not one each.
    reloading: tokio::sync::Mutex<()>,
    /// Stamps up to this are satisfied although the copy is older: the store was found behind a
    /// stamp it had issued (restored from a backup), so waiting for it would never end.
    satisfied_up_to: std::sync::atomic::AtomicI64,
}

impl PolicyCache {
    /// Loads the first snapshot; fails when the database cannot be read.
    pub async fn load(db: Database, metrics: ConsumerMetrics) -> Result<Self, StoreError> {
        let set = read(&db).await?;
        metrics.policy_reloads.with_label_values(&["success"]).inc();
        metrics
            .notifications_enabled
            .set(i64::from(set.notifications_enabled));
        let (enabled, _) = watch::channel(set.notifications_enabled);
        Ok(Self {
            db,
            current: RwLock::new(Arc::new(set)),
            enabled,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            satisfied_up_to: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Watches the global switch.
    pub fn enabled(&self) -> watch::Receiver<bool> {
        self.enabled.subscribe()
    }

    /// Checks the generation every `interval` and reloads when it moved, until `shutdown`.
    pub async fn refresh_until(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.refresh().await {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::warn!(message = "Cannot refresh policies; keeping the last copy.", error = %error);
            }
        }
    }

    /// Reloads if the store's generation moved since the last load.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let generation = self.db.generation().await?;
        if generation <= self.snapshot().generation {
            return Ok(());
        }
        let _reloading = self.reloading.lock().await;
        if generation <= self.snapshot().generation {
            return Ok(());
        }
        self.reload().await.map(|_| ())
    }

    /// Makes sure the copy is at least at `generation` (a message's stamp), reloading when it is
    /// behind. `Err` when the store cannot be read: the caller must not match against the older
    /// copy.
    pub async fn catch_up(&self, generation: i64) -> Result<(), StoreError> {
        if self.is_at_least(generation) {
            return Ok(());
        }
        let _reloading = self.reloading.lock().await;
        if self.is_at_least(generation) {
            return Ok(());
        }
        self.metrics.policy_catch_ups.inc();
        let loaded = self.reload().await.inspect_err(|_| {
            self.metrics
                .policy_reloads
                .with_label_values(&["failure"])
                .inc();
        })?;
        if loaded < generation {
            // The store is behind a stamp it issued: it was restored from a backup or rebuilt.
            // Waiting would never end; match against what the store has, and say so.
            tracing::warn!(
                message = "A message carries a newer policy generation than the store has; matching against the store's.",
                stamped = generation,
                store = loaded,
            );
            self.satisfied_up_to
                .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn is_at_least(&self, generation: i64) -> bool {
        generation <= self.snapshot().generation
            || generation
                <= self
                    .satisfied_up_to
                    .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads everything and installs it unless the copy is already newer; returns the generation
    /// read. Call with `reloading` held.
    async fn reload(&self) -> Result<i64, StoreError> {
        let set = read(&self.db).await?;
        let generation = set.generation;
        if generation < self.snapshot().generation {
            return Ok(generation);
        }
        let enabled = set.notifications_enabled;
        tracing::info!(
            message = "Policies reloaded.",
            policies = set.len(),
            generation,
            notifications_enabled = enabled
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        self.metrics
            .policy_reloads
            .with_label_values(&["success"])
            .inc();
        self.metrics.notifications_enabled.set(i64::from(enabled));
        self.enabled.send_replace(enabled);
        Ok(generation)
    }
}

async fn read(db: &Database) -> Result<PolicySet, StoreError> {
    // Read the generation first: a write that lands between these reads bumps it again, and the next
    // refresh picks that write up.
    let generation = db.generation().await?;
    let policies = db.enabled_policies().await?;
    let enabled = db.notification_enabled().await?;
    Ok(PolicySet::build(policies, enabled, generation))
}
