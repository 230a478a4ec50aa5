//! One replication stream per tenant this node owns: started by the first subscriber, stopped
//! `idle_timeout` after the last, its slot retained for `slot_retain` and then dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use super::stream::{ReplicationStats, StreamHandle, TenantStream};
use super::{Backoff, ReplicationError, ReplicationTarget, StreamEvent, sql};
use crate::config::ReplicationConfig;
use crate::error::OperationalError;
use crate::tasks::Owner;
use crate::types::TenantId;

/// Tries at dropping a slot whose retain window ended.
const DROP_ATTEMPTS: u32 = 5;

/// Answers whether this node streams a tenant's changes.
pub trait StreamOwnership: Send + Sync {
    /// Whether this node owns `tenant`'s stream.
    fn owns(&self, tenant: &TenantId) -> bool;

    /// The node that owns `tenant`'s stream, when another node does (`None`: this node, or
    /// nobody known).
    fn owner(&self, _tenant: &TenantId) -> Option<crate::types::NodeId> {
        None
    }
}

/// A single node owns every tenant.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalOwnership;

impl StreamOwnership for LocalOwnership {
    fn owns(&self, _tenant: &TenantId) -> bool {
        true
    }
}

/// What [`StreamManager::ensure_started`] found.
#[derive(Debug)]
pub enum Ensured {
    /// A new stream: the caller consumes its events (and confirms through the handle).
    Started {
        /// The stream.
        handle: StreamHandle,
        /// Its events, in WAL order.
        events: mpsc::Receiver<StreamEvent>,
    },
    /// The tenant's stream was already running; its consumer is already there.
    Running {
        /// The stream.
        handle: StreamHandle,
    },
}

impl Ensured {
    /// The stream, either way.
    pub fn handle(&self) -> &StreamHandle {
        match self {
            Ensured::Started { handle, .. } | Ensured::Running { handle } => handle,
        }
    }
}

enum Entry {
    Running {
        handle: StreamHandle,
        target: ReplicationTarget,
        subscribers: usize,
        generation: u64,
    },
    /// The stream stopped; its slot is kept until the retain window ends.
    Retained {
        target: ReplicationTarget,
        generation: u64,
    },
}

impl Entry {
    fn generation(&self) -> u64 {
        match self {
            Entry::Running { generation, .. } | Entry::Retained { generation, .. } => *generation,
        }
    }
}

struct Inner {
    owner: Owner,
    config: ReplicationConfig,
    ownership: Arc<dyn StreamOwnership>,
    stats: Arc<ReplicationStats>,
    entries: Mutex<HashMap<TenantId, Entry>>,
}

/// Starts and stops the tenants' replication streams; cheap to clone.
#[derive(Clone)]
pub struct StreamManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamManager").finish_non_exhaustive()
    }
}

impl StreamManager {
    /// A manager whose streams and timers run under children of `owner`.
    pub fn new(
        owner: &Owner,
        config: ReplicationConfig,
        ownership: Arc<dyn StreamOwnership>,
    ) -> StreamManager {
        StreamManager {
            inner: Arc::new(Inner {
                owner: owner.child(),
                config,
                ownership,
                stats: Arc::new(ReplicationStats::default()),
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The counters of every stream of this manager.
    pub fn stats(&self) -> &ReplicationStats {
        &self.inner.stats
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more subscriber of `tenant` and makes sure its stream runs (reusing a
    /// retained slot). A running stream keeps its target even if `target` differs.
    ///
    /// # Errors
    /// [`ReplicationError::NotOwner`] when this node does not own the tenant. Connection and
    /// slot problems do not fail this call: the stream retries and reports them in its status.
    pub fn ensure_started(
        &self,
        tenant: &TenantId,
        target: ReplicationTarget,
    ) -> Result<Ensured, ReplicationError> {
        if !self.inner.ownership.owns(tenant) {
            return Err(ReplicationError::NotOwner {
                tenant: tenant.as_str().to_string(),
            });
        }
        let mut entries = self.entries();
        let previous = entries.get(tenant).map(Entry::generation).unwrap_or(0);
        if let Some(Entry::Running {
            handle,
            subscribers,
            generation,
            ..
        }) = entries.get_mut(tenant)
            && !handle.is_stopped()
        {
            *subscribers += 1;
            // Any idle countdown in flight is for an older generation.
            *generation += 1;
            return Ok(Ensured::Running {
                handle: handle.clone(),
            });
        }
        let (handle, events) = TenantStream::spawn(
            &self.inner.owner,
            target.clone(),
            &self.inner.config,
            self.inner.stats.clone(),
        );
        entries.insert(
            tenant.clone(),
            Entry::Running {
                handle: handle.clone(),
                target,
                subscribers: 1,
                generation: previous + 1,
            },
        );
        Ok(Ensured::Started { handle, events })
    }

    /// Counts one subscriber of `tenant` less; after the last, the stream stops
    /// `idle_timeout` later unless a subscriber comes back first.
    pub fn release(&self, tenant: &TenantId) {
        let mut entries = self.entries();
        let Some(Entry::Running {
            subscribers,
            generation,
            ..
        }) = entries.get_mut(tenant)
        else {
            return;
        };
        *subscribers = subscribers.saturating_sub(1);
        if *subscribers > 0 {
            return;
        }
        *generation += 1;
        let (me, tenant, expected) = (self.clone(), tenant.clone(), *generation);
        let idle = self.inner.config.idle_timeout;
        self.inner
            .owner
            .spawn("replication idle countdown", async move {
                tokio::time::sleep(idle).await;
                me.stop_if_idle(&tenant, expected).await;
            });
    }

    /// Whether `tenant` has a stream (running or starting).
    pub fn is_running(&self, tenant: &TenantId) -> bool {
        matches!(self.entries().get(tenant), Some(Entry::Running { .. }))
    }

    /// The tenants whose stream runs (or starts) on this node.
    pub fn running(&self) -> Vec<TenantId> {
        let mut running: Vec<TenantId> = self
            .entries()
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Running { .. }))
            .map(|(tenant, _)| tenant.clone())
            .collect();
        running.sort();
        running
    }

    /// The replication lag of every running stream that knows it ([`StreamHandle::lag_bytes`]).
    pub fn lags(&self) -> Vec<(TenantId, u64)> {
        self.entries()
            .iter()
            .filter_map(|(tenant, entry)| match entry {
                Entry::Running { handle, .. } => {
                    handle.lag_bytes().map(|lag| (tenant.clone(), lag))
                }
                Entry::Retained { .. } => None,
            })
            .collect()
    }

    /// Whether `tenant`'s stream is stopped and its slot kept for a resubscription.
    pub fn is_retained(&self, tenant: &TenantId) -> bool {
        matches!(self.entries().get(tenant), Some(Entry::Retained { .. }))
    }

    /// Stops `tenant`'s stream now, whatever its subscriber count, and keeps its slot for the
    /// retain window (the feed that used it ended). The entry is retained at once, so a new
    /// subscriber starts a new stream (which waits for the slot if this one still holds it).
    pub fn retire(&self, tenant: &TenantId) {
        let expected = match self.entries().get(tenant) {
            Some(Entry::Running { generation, .. }) => *generation,
            _ => return,
        };
        if let Some(handle) = self.take_running(tenant, expected, true) {
            let me = self.clone();
            let tenant = tenant.clone();
            self.inner
                .owner
                .spawn("replication stream retire", async move {
                    me.finish_stop(&tenant, handle, expected).await;
                });
        }
    }

    async fn stop_if_idle(&self, tenant: &TenantId, expected: u64) {
        if let Some(handle) = self.take_running(tenant, expected, false) {
            self.finish_stop(tenant, handle, expected).await;
        }
    }

    /// Turns the running entry of generation `expected` (without subscribers unless
    /// `any_subscribers`) into a retained one, returning its stream.
    fn take_running(
        &self,
        tenant: &TenantId,
        expected: u64,
        any_subscribers: bool,
    ) -> Option<StreamHandle> {
        let mut entries = self.entries();
        let Some(Entry::Running {
            subscribers,
            generation,
            ..
        }) = entries.get(tenant)
        else {
            return None;
        };
        if *generation != expected || (*subscribers != 0 && !any_subscribers) {
            return None;
        }
        let Some(Entry::Running { handle, target, .. }) = entries.remove(tenant) else {
            return None;
        };
        entries.insert(
            tenant.clone(),
            Entry::Retained {
                target,
                generation: expected + 1,
            },
        );
        Some(handle)
    }

    async fn finish_stop(&self, tenant: &TenantId, handle: StreamHandle, expected: u64) {
        tracing::info!(tenant = %tenant.as_str(), slot = %handle.slot(), "stopping an idle replication stream");
        handle.shutdown().await;
        let (me, tenant) = (self.clone(), tenant.clone());
        let retain = self.inner.config.slot_retain;
        self.inner
            .owner
            .spawn("replication slot retain window", async move {
                tokio::time::sleep(retain).await;
                me.drop_if_retained(&tenant, expected + 1).await;
            });
    }

    async fn drop_if_retained(&self, tenant: &TenantId, expected: u64) {
        let target = {
            let mut entries = self.entries();
            match entries.get(tenant) {
                Some(Entry::Retained { generation, .. }) if *generation == expected => {}
                _ => return,
            }
            match entries.remove(tenant) {
                Some(Entry::Retained { target, .. }) => target,
                _ => return,
            }
        };
        self.drop_slot_retrying(tenant, &target).await;
    }

    /// Stops `tenant`'s stream at once, if it runs, and keeps its slot for the tenant's new
    /// owner (the ring moved the tenant away from this node). The entry goes: this node
    /// neither retains nor drops a slot it no longer owns. Returns whether a stream stopped.
    pub async fn relinquish(&self, tenant: &TenantId) -> bool {
        let handle = match self.entries().remove(tenant) {
            Some(Entry::Running { handle, .. }) => handle,
            Some(retained @ Entry::Retained { .. }) => {
                // Not streaming: leave the retain window to run out without a drop.
                drop(retained);
                return false;
            }
            None => return false,
        };
        tracing::info!(tenant = %tenant.as_str(), slot = %handle.slot(), "the tenant moved to another node; stopping its replication stream");
        handle.shutdown().await;
        true
    }

    /// Stops `tenant`'s stream, if any, and drops its slot at once (the tenant was deleted: its
    /// slot must not pin WAL for the retain window).
    pub async fn forget(&self, tenant: &TenantId) {
        let (handle, target) = match self.entries().remove(tenant) {
            Some(Entry::Running { handle, target, .. }) => (Some(handle), target),
            Some(Entry::Retained { target, .. }) => (None, target),
            None => return,
        };
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
        self.drop_slot_retrying(tenant, &target).await;
    }

    async fn drop_slot_retrying(&self, tenant: &TenantId, target: &ReplicationTarget) {
        let mut backoff =
            Backoff::new(self.inner.config.backoff_min, self.inner.config.backoff_max);
        for attempt in 1..=DROP_ATTEMPTS {
            match self.drop_slot(target).await {
                Ok(dropped) => {
                    if dropped {
                        self.inner.stats.count_dropped();
                        tracing::info!(tenant = %tenant.as_str(), slot = %target.slot, "retained replication slot dropped");
                    }
                    return;
                }
                // Someone streams from it again (this node after a resubscription, or the
                // tenant's new owner): it is theirs now.
                Err(ReplicationError::SlotBeingUsed { .. }) => return,
                Err(error) if attempt == DROP_ATTEMPTS => {
                    tracing::error!(
                        error_code = %error.code(),
                        tenant = %tenant.as_str(),
                        slot = %target.slot,
                        %error,
                        "could not drop a retained replication slot; it holds WAL until it is reused or dropped"
                    );
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    async fn drop_slot(&self, target: &ReplicationTarget) -> Result<bool, ReplicationError> {
        let owner = self.inner.owner.child();
        let result = async {
            let client = sql::connect(target, &owner).await?;
            sql::drop_slot(&client, &target.slot).await
        }
        .await;
        owner.shutdown(Duration::from_secs(1)).await;
        result
    }

    /// Stops every stream with a final status update and keeps their slots, so that the next
    /// owner (or this node after a restart) resumes from the confirmed positions.
    pub async fn shutdown(&self) {
        let handles: Vec<StreamHandle> = {
            let mut entries = self.entries();
            let running: Vec<TenantId> = entries
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Running { .. }))
                .map(|(t, _)| t.clone())
                .collect();
            running
                .into_iter()
                .filter_map(|tenant| match entries.remove(&tenant) {
                    Some(Entry::Running { handle, .. }) => Some(handle),
                    _ => None,
                })
                .collect()
        };
        futures::future::join_all(handles.iter().map(StreamHandle::shutdown)).await;
        self.inner.owner.shutdown(Duration::from_secs(1)).await;
    }
}
