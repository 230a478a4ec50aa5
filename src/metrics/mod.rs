//! Prometheus metrics of this node: the one process-wide registry, the counters other modules
//! bump through one-line calls, the series sampled at scrape time, and the `/metrics` text.
//!
//! What it must not do: decide behaviour (nothing reads a metric back to act on it), or cost
//! the fan-out path a label lookup or an allocation per delivery. Hot paths count through
//! handles resolved once ([`SocketTally`] per socket, fixed arrays per kind) and add plain
//! integers per item, flushing into the registry's atomics once per batch.
//!
//! Sources, in the order of the README's list:
//! - counted here: joins ([`channel_joined`]), messages in and out by kind with their bytes
//!   ([`SocketTally`]), tenant ownership moves ([`ownership_moved`]), and every log event that
//!   carries an operational code ([`log_codes`]: errors and rate-limit hits by code);
//! - sampled at scrape from the counters the modules keep, by the [`Sampler`]s `app` registers
//!   on [`NodeMetrics`] (sockets, rooms, presence entries, bus links and queues, replication
//!   streams and lag).
//!
//! Per-tenant series are capped ([`tenants::TENANT_SERIES_MAX`] distinct tenants, the rest
//! folded into `tenant="(other)"`) and removed by [`clean_idle_tenants`] for tenants without
//! activity between two runs of the cleaner (`METRICS_CLEANER_SCHEDULE_TIMER_IN_MS`).

pub mod log_codes;
mod merge;
mod socket;
mod tenants;

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::error::ErrorCode;

pub use merge::merge_expositions;
pub use socket::SocketTally;

/// What a delivered message is (the hub's fan-out kinds), for `realtime_messages_out_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutKind {
    /// A broadcast (client, HTTP API, database) or a system message.
    Broadcast = 0,
    /// A `presence_diff`.
    Presence = 1,
    /// A `postgres_changes` delivery.
    PostgresChanges = 2,
}

impl OutKind {
    const ALL: [OutKind; 3] = [
        OutKind::Broadcast,
        OutKind::Presence,
        OutKind::PostgresChanges,
    ];

    const fn label(self) -> &'static str {
        match self {
            OutKind::Broadcast => "broadcast",
            OutKind::Presence => "presence",
            OutKind::PostgresChanges => "postgres_changes",
        }
    }
}

/// What a client frame is, for `realtime_messages_in_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InKind {
    /// `phx_join`.
    Join = 0,
    /// `phx_leave`.
    Leave = 1,
    /// `broadcast` (JSON push or kind-3 binary).
    Broadcast = 2,
    /// `presence` (track / untrack).
    Presence = 3,
    /// `access_token`.
    AccessToken = 4,
    /// `heartbeat` on the `phoenix` topic.
    Heartbeat = 5,
    /// Anything else.
    Other = 6,
}

impl InKind {
    const ALL: [InKind; 7] = [
        InKind::Join,
        InKind::Leave,
        InKind::Broadcast,
        InKind::Presence,
        InKind::AccessToken,
        InKind::Heartbeat,
        InKind::Other,
    ];

    /// Classifies a decoded client frame by its topic and event (no allocation).
    pub fn of(topic: &str, event: &str) -> InKind {
        use crate::phoenix as p;
        if topic == p::TOPIC_PHOENIX {
            return if event == p::EVENT_HEARTBEAT {
                InKind::Heartbeat
            } else {
                InKind::Other
            };
        }
        match event {
            p::EVENT_JOIN => InKind::Join,
            p::EVENT_LEAVE => InKind::Leave,
            p::EVENT_BROADCAST => InKind::Broadcast,
            p::EVENT_PRESENCE => InKind::Presence,
            p::EVENT_ACCESS_TOKEN => InKind::AccessToken,
            _ => InKind::Other,
        }
    }

    const fn label(self) -> &'static str {
        match self {
            InKind::Join => "phx_join",
            InKind::Leave => "phx_leave",
            InKind::Broadcast => "broadcast",
            InKind::Presence => "presence",
            InKind::AccessToken => "access_token",
            InKind::Heartbeat => "heartbeat",
            InKind::Other => "other",
        }
    }
}

/// Which way the ring moved a tenant's change stream, for `realtime_tenant_ownership_moves_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipMove {
    /// This node became the owner.
    Acquired = 0,
    /// This node was the owner and handed the stream on.
    Released = 1,
    /// Another node owned it and now a third one does (this node re-wants from the new one).
    Followed = 2,
}

impl OwnershipMove {
    const ALL: [OwnershipMove; 3] = [
        OwnershipMove::Acquired,
        OwnershipMove::Released,
        OwnershipMove::Followed,
    ];

    const fn label(self) -> &'static str {
        match self {
            OwnershipMove::Acquired => "acquired",
            OwnershipMove::Released => "released",
            OwnershipMove::Followed => "followed",
        }
    }
}

/// The codes counted as rate-limit hits (PROTOCOL.md 12.2) besides being errors.
const RATE_LIMIT_CODES: &[ErrorCode] = &[
    ErrorCode::ConnectionRateLimitReached,
    ErrorCode::ClientJoinRateLimitReached,
    ErrorCode::ChannelRateLimitReached,
    ErrorCode::JoinsRateLimitReached,
    ErrorCode::MessagePerSecondRateLimitReached,
    ErrorCode::PresenceRateLimitReached,
    ErrorCode::ClientPresenceRateLimitReached,
    ErrorCode::DatabaseConnectionRateLimitReached,
];

/// The process-wide registry and the handles of the counters bumped from other modules.
struct Registered {
    registry: Registry,
    channel_joins: IntCounter,
    channels: IntGauge,
    ownership_moves: Vec<IntCounter>,
    /// Indexed like [`ErrorCode::ALL`].
    errors: Vec<IntCounter>,
    /// Indexed like [`ErrorCode::ALL`]; `None` for codes that are not rate limits.
    rate_limit_hits: Vec<Option<IntCounter>>,
    tenants: tenants::TenantSeries,
}

// A metric whose name or labels are invalid is a bug of this file, caught by its tests.
fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl Registered {
    fn new() -> Registered {
        let registry = Registry::new();
        let channel_joins = IntCounter::new(
            "realtime_channel_joins_total",
            "Channel joins completed on this node",
        )
        .expect("valid metric");
        registry
            .register(Box::new(channel_joins.clone()))
            .expect("unique metric");
        let channels = IntGauge::new(
            "realtime_channels",
            "Channels joined on this node's sockets",
        )
        .expect("valid metric");
        registry
            .register(Box::new(channels.clone()))
            .expect("unique metric");
        let per = |vec: IntCounterVec, labels: &[&'static str]| -> Vec<IntCounter> {
            labels
                .iter()
                .map(|l| vec.with_label_values(&[*l]))
                .collect()
        };
        let move_labels: Vec<_> = OwnershipMove::ALL.iter().map(|k| k.label()).collect();
        let ownership_moves = per(
            counter_vec(
                &registry,
                "realtime_tenant_ownership_moves_total",
                "Tenant change streams the ring moved, as seen by this node's feeds",
                "direction",
            ),
            &move_labels,
        );
        let errors_vec = counter_vec(
            &registry,
            "realtime_errors_total",
            "Log events carrying an operational code, by code",
            "code",
        );
        let hits_vec = counter_vec(
            &registry,
            "realtime_rate_limit_hits_total",
            "Operations refused by a tenant or client limit, by code",
            "code",
        );
        let errors = ErrorCode::ALL
            .iter()
            .map(|c| errors_vec.with_label_values(&[c.as_str()]))
            .collect();
        let rate_limit_hits = ErrorCode::ALL
            .iter()
            .map(|c| {
                RATE_LIMIT_CODES
                    .contains(c)
                    .then(|| hits_vec.with_label_values(&[c.as_str()]))
            })
            .collect();
        let tenants = tenants::TenantSeries::new(&registry);
        Registered {
            registry,
            channel_joins,
            channels,
            ownership_moves,
            errors,
            rate_limit_hits,
            tenants,
        }
    }

    /// Counts one log event with the code at `index` of [`ErrorCode::ALL`].
    fn count_code(&self, index: usize) {
        if let Some(errors) = self.errors.get(index) {
            errors.inc();
        }
        if let Some(Some(hits)) = self.rate_limit_hits.get(index) {
            hits.inc();
        }
    }
}

/// The one process-wide value of this module (STYLE.md: never read to decide behaviour).
static REGISTERED: LazyLock<Registered> = LazyLock::new(Registered::new);

fn registered() -> &'static Registered {
    &REGISTERED
}

/// Counts a completed channel join.
pub fn channel_joined() {
    registered().channel_joins.inc();
}

/// Counts a tenant's change stream moved by the ring.
pub fn ownership_moved(direction: OwnershipMove) {
    registered().ownership_moves[direction as usize].inc();
}

/// The label under which `tenant`'s per-tenant series appear: its external id while fewer than
/// [`tenants::TENANT_SERIES_MAX`] tenants have series, else [`tenants::OTHER_TENANTS`]. Marks it active.
pub fn tenant_label(tenant: &str) -> String {
    registered().tenants.label(tenant)
}

/// Removes the per-tenant series of tenants that had no socket and no activity since the last
/// call; returns how many tenants were removed. Run every `METRICS_CLEANER_SCHEDULE_TIMER_IN_MS`.
pub fn clean_idle_tenants() -> usize {
    registered().tenants.clean()
}

/// Fills a [`Snapshot`] at scrape time from one subsystem's own counters.
pub type Sampler = Box<dyn Fn(&mut Snapshot) + Send + Sync>;

/// How two samples of one series (same name and labels) combine, e.g. tenants folded into
/// [`tenants::OTHER_TENANTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// Add the values.
    Sum,
    /// Keep the larger value.
    Max,
}

/// Series sampled for one scrape, built with the crate's data model.
#[derive(Default)]
pub struct Snapshot {
    families: BTreeMap<&'static str, MetricFamily>,
}

impl Snapshot {
    /// Sets a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(MetricType::GAUGE, name, help, labels, value, Fold::Sum);
    }

    /// Sets a gauge sample, combining with an existing one of the same labels by `fold`.
    pub fn gauge_fold(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
        fold: Fold,
    ) {
        self.sample(MetricType::GAUGE, name, help, labels, value, fold);
    }

    /// Sets a counter sample read from a subsystem's own monotonic counter.
    pub fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(
            MetricType::COUNTER,
            name,
            help,
            labels,
            value as f64,
            Fold::Sum,
        );
    }

    fn family(&mut self, name: &'static str, help: &str, kind: MetricType) -> &mut MetricFamily {
        self.families.entry(name).or_insert_with(|| {
            let mut family = MetricFamily::default();
            family.set_name(name.to_string());
            family.set_help(help.to_string());
            family.set_field_type(kind);
            family
        })
    }

    fn sample(
        &mut self,
        kind: MetricType,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
        fold: Fold,
    ) {
        let family = self.family(name, help, kind);
        debug_assert_eq!(family.get_field_type(), kind, "one type per family");
        let pairs: Vec<LabelPair> = labels.iter().map(|(n, v)| label(n, v)).collect();
        let same = |m: &&mut Metric| {
            m.get_label().len() == pairs.len()
                && m.get_label()
                    .iter()
                    .zip(&pairs)
                    .all(|(a, b)| a.name() == b.name() && a.value() == b.value())
        };
        let combine = |old: f64| match fold {
            Fold::Sum => old + value,
            Fold::Max => old.max(value),
        };
        if let Some(metric) = family.mut_metric().iter_mut().find(same) {
            match kind {
                MetricType::COUNTER => {
                    let mut c = metric.get_counter().clone();
                    c.set_value(combine(c.get_value()));
                    metric.set_counter(c);
                }
                _ => {
                    let mut g = metric.get_gauge().clone();
                    g.set_value(combine(g.get_value()));
                    metric.set_gauge(g);
                }
            }
            return;
        }
        let mut metric = Metric::from_label(pairs);
        match kind {
            MetricType::COUNTER => {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(value);
                metric.set_counter(c);
            }
            _ => {
                let mut g = prometheus::proto::Gauge::default();
                g.set_value(value);
                metric.set_gauge(g);
            }
        }
        family.mut_metric().push(metric);
    }
}

#[cfg(test)]
impl Snapshot {
    /// The sum of `name`'s samples whose labels include every pair of `with`.
    pub(crate) fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.families.get(name).map_or(0.0, |family| {
            family
                .get_metric()
                .iter()
                .filter(|m| {
                    with.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == *k && l.value() == *v)
                    })
                })
                .map(|m| match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                })
                .sum()
        })
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

/// One node's view for `/metrics`: the process-wide registry plus the samplers of this node's
/// subsystems, rendered with `node` (and `region`) labels on every series.
pub struct NodeMetrics {
    node: String,
    region: Option<String>,
    // std Mutex: held while samplers run (each reads a few counters, no await).
    samplers: Mutex<Vec<Sampler>>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.node)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// The metrics of node `node` in `region`.
    pub fn new(node: &str, region: Option<&str>) -> NodeMetrics {
        // Registered on first use: make sure the families exist before the first scrape.
        let _ = registered();
        NodeMetrics {
            node: node.to_string(),
            region: region.map(str::to_string),
            samplers: Mutex::new(Vec::new()),
        }
    }

    /// This node's region (`REGION`).
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Adds a sampler run at every scrape.
    pub fn add_sampler(&self, sampler: Sampler) {
        self.samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sampler);
    }

    /// Renders this node's series in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut snapshot = Snapshot::default();
        socket::sample_traffic(&mut snapshot);
        for sampler in self
            .samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            sampler(&mut snapshot);
        }
        let mut families = registered().registry.gather();
        families.extend(snapshot.families.into_values());
        // The encoder refuses a family without samples.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut node_labels = vec![label("node", &self.node)];
        if let Some(region) = &self.region {
            node_labels.push(label("region", region));
        }
        for family in &mut families {
            for metric in family.mut_metric() {
                let mut labels = node_labels.clone();
                labels.extend(metric.take_label());
                metric.set_label(labels);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid families, which the tests rule out.
        if let Err(err) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`NodeMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_by_topic_and_event() {
        assert_eq!(InKind::of("phoenix", "heartbeat"), InKind::Heartbeat);
        assert_eq!(InKind::of("phoenix", "phx_join"), InKind::Other);
        assert_eq!(InKind::of("realtime:a", "phx_join"), InKind::Join);
        assert_eq!(InKind::of("realtime:a", "broadcast"), InKind::Broadcast);
        assert_eq!(InKind::of("realtime:a", "presence"), InKind::Presence);
        assert_eq!(
            InKind::of("realtime:a", "access_token"),
            InKind::AccessToken
        );
        assert_eq!(InKind::of("realtime:a", "phx_leave"), InKind::Leave);
        assert_eq!(InKind::of("realtime:a", "whatever"), InKind::Other);
    }

    #[test]
    fn render_labels_every_series_with_the_node_and_folds_samples() {
        let metrics = NodeMetrics::new("node-a", Some("eu"));
        metrics.add_sampler(Box::new(|s: &mut Snapshot| {
            s.gauge("realtime_test_gauge", "test", &[("tenant", "t1")], 2.0);
            s.gauge_fold(
                "realtime_test_gauge",
                "test",
                &[("tenant", "t1")],
                5.0,
                Fold::Max,
            );
            s.counter("realtime_test_total", "test", &[], 7);
            s.counter("realtime_test_total", "test", &[], 3);
        }));
        channel_joined();
        let text = metrics.render();
        assert!(
            text.contains(r#"realtime_test_gauge{node="node-a",region="eu",tenant="t1"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"realtime_test_total{node="node-a",region="eu"} 10"#),
            "{text}"
        );
        assert!(text.contains("# TYPE realtime_channel_joins_total counter"));
        assert!(text.contains(
            r#"realtime_errors_total{node="node-a",region="eu",code="TenantNotFound"} "#
        ));
        assert!(text.contains(
            r#"realtime_rate_limit_hits_total{node="node-a",region="eu",code="ChannelRateLimitReached"} "#
        ));
        assert!(!text.contains(
            r#"realtime_rate_limit_hits_total{node="node-a",region="eu",code="TenantNotFound"}"#
        ));
    }
}
