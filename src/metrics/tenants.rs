//! Per-tenant series, bounded: at most [`TENANT_SERIES_MAX`] tenants get series of their own,
//! later ones count into [`OTHER_TENANTS`] until the cleaner frees a place.
//!
//! A tenant's entry holds its counter handles (resolved once, so sockets add to atomics
//! without a lookup). [`TenantSeries::clean`] removes an entry, and its series, when no socket
//! holds it and nothing touched it since the previous clean.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use super::socket::Counts;

/// Most tenants with series of their own on one node.
pub const TENANT_SERIES_MAX: usize = 200;

/// The `tenant` label of the tenants past the cap (not a valid tenant external id).
pub const OTHER_TENANTS: &str = "(other)";

/// One tenant's counter handles.
#[derive(Debug)]
pub(crate) struct TenantCounters {
    /// Its `tenant` label.
    pub(crate) label: String,
    pub(crate) connections: IntGauge,
    pub(crate) channels: IntGauge,
    /// Message counts of the tenant's closed sockets (live ones are summed at scrape).
    pub(crate) closed: Counts,
    /// Set by label lookups (sampled series), cleared by each clean.
    touched: AtomicBool,
    /// Closed sockets' message totals at the previous clean.
    seen: AtomicU64,
}

impl TenantCounters {
    fn activity(&self) -> u64 {
        let (i, o, _) = self.closed.tenant_totals();
        i + o
    }
}

#[derive(Debug)]
struct Vecs {
    connections: IntGaugeVec,
    channels: IntGaugeVec,
}

impl Vecs {
    fn counters(&self, label: &str) -> TenantCounters {
        TenantCounters {
            label: label.to_string(),
            connections: self.connections.with_label_values(&[label]),
            channels: self.channels.with_label_values(&[label]),
            closed: Counts::default(),
            touched: AtomicBool::new(true),
            seen: AtomicU64::new(0),
        }
    }

    fn remove(&self, label: &str) {
        // Err only when the series was never created; nothing to remove then.
        let _ = self.connections.remove_label_values(&[label]);
        let _ = self.channels.remove_label_values(&[label]);
    }
}

/// The per-tenant series of this process.
#[derive(Debug)]
pub(crate) struct TenantSeries {
    vecs: Vecs,
    other: Arc<TenantCounters>,
    // std Mutex: a hash lookup per socket start or sampled series, never held across an await.
    tenants: Mutex<HashMap<String, Arc<TenantCounters>>>,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), &["tenant"]).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl TenantSeries {
    pub(crate) fn new(registry: &Registry) -> TenantSeries {
        let vecs = Vecs {
            connections: gauge_vec(
                registry,
                "realtime_tenant_connections",
                "Open sockets of a tenant",
            ),
            channels: gauge_vec(
                registry,
                "realtime_tenant_channels",
                "Joined channels of a tenant's sockets",
            ),
        };
        let other = Arc::new(vecs.counters(OTHER_TENANTS));
        TenantSeries {
            vecs,
            other,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<TenantCounters>>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handles of `tenant`: its own while there is room, else the folded ones.
    pub(crate) fn handle(&self, tenant: &str) -> Arc<TenantCounters> {
        let mut tenants = self.lock();
        if let Some(counters) = tenants.get(tenant) {
            counters.touched.store(true, Ordering::Relaxed);
            return counters.clone();
        }
        if tenants.len() >= TENANT_SERIES_MAX {
            return self.other.clone();
        }
        let counters = Arc::new(self.vecs.counters(tenant));
        tenants.insert(tenant.to_string(), counters.clone());
        counters
    }

    /// Every entry, the folded one included.
    pub(crate) fn all(&self) -> Vec<Arc<TenantCounters>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.push(self.other.clone());
        all
    }

    /// The label of `tenant` for sampled series (its own or [`OTHER_TENANTS`]).
    pub(crate) fn label(&self, tenant: &str) -> String {
        let counters = self.handle(tenant);
        if Arc::ptr_eq(&counters, &self.other) {
            OTHER_TENANTS.to_string()
        } else {
            tenant.to_string()
        }
    }

    /// Removes the tenants without a socket and without activity since the previous clean.
    pub(crate) fn clean(&self) -> usize {
        let mut tenants = self.lock();
        let before = tenants.len();
        tenants.retain(|label, counters| {
            let activity = counters.activity();
            let touched = counters.touched.swap(false, Ordering::Relaxed);
            let moved = counters.seen.swap(activity, Ordering::Relaxed) != activity;
            // Handles are cloned out only under this lock: a count of 1 cannot grow meanwhile.
            let keep = Arc::strong_count(counters) > 1 || touched || moved;
            if !keep {
                self.vecs.remove(label);
            }
            keep
        });
        before - tenants.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_cap_fold_and_idle_ones_are_cleaned() {
        let registry = Registry::new();
        let series = TenantSeries::new(&registry);
        let held: Vec<_> = (0..TENANT_SERIES_MAX)
            .map(|i| series.handle(&format!("t{i}")))
            .collect();
        let late = series.handle("late");
        assert!(Arc::ptr_eq(&late, &series.other), "past the cap: folded");
        assert_eq!(series.label("late"), OTHER_TENANTS);
        assert_eq!(series.label("t1"), "t1");

        // Held by sockets: kept however idle.
        assert_eq!(series.clean(), 0);
        assert_eq!(series.clean(), 0);
        drop(held);
        // Touched (created) since the previous clean: kept once more.
        series.handle("t0").channels.inc();
        assert_eq!(
            series.clean(),
            TENANT_SERIES_MAX - 1,
            "all but t0, which moved"
        );
        let names: Vec<String> = registry
            .gather()
            .iter()
            .filter(|f| f.name() == "realtime_tenant_channels")
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_label()[0].value().to_string())
            })
            .collect();
        assert_eq!(names, vec![OTHER_TENANTS.to_string(), "t0".to_string()]);
        assert_eq!(series.clean(), 1, "t0 idle since");
        assert_eq!(series.len(), 0);
        assert_eq!(series.label("late"), "late", "a freed place is reusable");
    }
}
