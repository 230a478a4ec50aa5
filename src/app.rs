//! Wiring: builds every subsystem from `Config`, starts them in order and owns shutdown.
//!
//! Start-up order: configuration → logging → JWT self-test → metadata DB pool and migrations →
//! tenant registry → self-host seed → tenant database pools (opened on first use) → background
//! tasks (the janitor with `RUN_JANITOR`) → HTTP listener. Any failure before the listener runs ends
//! the process with a clear message and a non-zero exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::api::{self, ApiState};
use crate::authorization::Authorization;
use crate::broadcast::{Broadcaster, NoPeers, PeerFanout};
use crate::bus::{Bus, BusConfig};
use crate::channel::ChannelContext;
use crate::cluster::{Membership, NodeAddresses};
use crate::config::Config;
use crate::db::{Db, TenantDbs};
use crate::db_broadcast::{DbBroadcast, DbBroadcastDeps, NodeInterest, TenantInterest};
use crate::hub::Hub;
use crate::janitor::Janitor;
use crate::limits::{Limits, LimitsConfig};
use crate::metrics::{Fold, NodeMetrics, Snapshot};
use crate::peers::changes::ChangeRouter;
use crate::peers::links::PeerLinks;
use crate::peers::{ClusterMetricsView, ClusterStatusView, Peers, PeersParts};
use crate::postgres_changes::replication::StreamOwnership;
use crate::postgres_changes::service::PostgresChanges;
use crate::presence::{NoReplication, Presence, PresenceReplication};
use crate::ring::{DEFAULT_VNODES_PER_NODE, Ring, RingOwnership};
use crate::tasks::Owner;
use crate::tenants::{self, Cipher, TenantChange, Tenants};
use crate::transport::{self, OpenSockets, Transport};
use crate::types::{NodeId, NodeIncarnation};

/// Entry point of the `realtime` binary: reads the configuration, starts logging and runs
/// until SIGTERM or Ctrl-C.
pub fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("realtime: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("realtime: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match start(config).await {
            Ok(app) => app,
            Err(err) => {
                tracing::error!("start-up failed: {err:#}");
                eprintln!("realtime: start-up failed: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down");
        match app.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("realtime: shutdown failed: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// How long shutdown waits for the sockets to send their close frames.
const SOCKET_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for background tasks and in-flight HTTP requests.
const TASK_GRACE: Duration = Duration::from_secs(5);

/// A started node: its HTTP listener and subsystems.
#[derive(Debug)]
pub struct RunningApp {
    local_addr: SocketAddr,
    tenants: Tenants,
    db: Db,
    /// Tenant database pools (Postgres Changes); closed after the sockets and the HTTP server.
    tenant_dbs: TenantDbs,
    /// Postgres Changes: subscriptions, streams and their consumers.
    changes: PostgresChanges,
    /// Broadcast from the database: this node's messages streams.
    db_broadcast: DbBroadcast,
    hub: Arc<Hub>,
    transport: Arc<Transport>,
    draining: Arc<AtomicBool>,
    /// Cluster membership (a cluster of one without seeds).
    membership: Arc<Membership>,
    /// The inter-node bus, when clustered.
    bus: Option<Bus>,
    /// Membership, bus and peer tasks.
    cluster: Owner,
    /// The node's root owner; every subsystem's owner is a child of it.
    owner: Owner,
    /// Background tasks (tenant-change listener, limit sweeper, the janitor).
    background: Owner,
    /// The HTTP server task.
    server: Owner,
    /// Stops the listener; the server then lets in-flight requests finish.
    stop_accepting: Option<oneshot::Sender<()>>,
    /// What the HTTP server task returned.
    served: oneshot::Receiver<std::io::Result<()>>,
}

impl RunningApp {
    /// Returns the address the HTTP listener is bound to (useful with `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the tenant registry of this node.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Returns the tenant database pools of this node.
    pub fn tenant_dbs(&self) -> &TenantDbs {
        &self.tenant_dbs
    }

    /// Returns this node's hub (rooms and connections).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Stops the node in the order of docs/ARCHITECTURE.md ("Shutdown order"): stop accepting,
    /// mark the node not ready (joins refused with `RealtimeRestarting`), leave the cluster,
    /// release owned streams, drain every socket (a `system` disconnect to each channel, then
    /// close 1012, so clients reconnect elsewhere), close the bus, stop background tasks, let
    /// in-flight HTTP requests finish, close the tenant database pools, then the metadata pool.
    ///
    /// # Errors
    /// When the HTTP server failed or did not stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // 1. Stop accepting: the listener closes; requests already in flight go on.
        if let Some(stop) = self.stop_accepting.take() {
            // Err means the server already stopped on its own; `served` below says why.
            let _ = stop.send(());
        }
        // 2. Not ready: new joins are refused while the sockets drain.
        self.draining.store(true, Ordering::Relaxed);
        // 3. Leave the cluster: peers drop this node's presences at once and their rings
        //    stop naming it, so its tenants' streams move.
        self.membership.leave().await;
        // 4. Release the streams: their positions are confirmed and their slots kept, so the
        //    next owner (or this node after a restart) resumes without loss.
        self.changes.shutdown(TASK_GRACE).await;
        self.db_broadcast.shutdown(TASK_GRACE).await;
        // 5. Drain the sockets: each tells its channels (`system` disconnect), closes with
        //    1012 and ends.
        if !self.transport.shutdown(SOCKET_DRAIN_GRACE).await {
            tracing::warn!(
                open = self.transport.sockets.open(),
                "sockets still open after the drain grace period"
            );
        }
        // 6. Close the bus, after the sockets' last frames.
        if let Some(bus) = &self.bus {
            bus.shutdown().await;
        }
        self.membership.shutdown().await;
        if !self.cluster.shutdown(TASK_GRACE).await {
            tracing::warn!("cluster tasks still running after the grace period");
        }
        // 7. Background tasks, then the HTTP server (in-flight requests finish).
        if !self.background.shutdown(TASK_GRACE).await {
            tracing::warn!("background tasks still running after the grace period");
        }
        // The listener was told to stop in step 1: wait for the server's own result before
        // its task is cancelled (a cancelled task would drop it).
        let served = tokio::time::timeout(TASK_GRACE, &mut self.served).await;
        let server_stopped = self.server.shutdown(TASK_GRACE).await;
        //    Tenant database pools: nothing uses them once sockets and requests are done.
        if !self.tenant_dbs.shutdown(TASK_GRACE).await {
            tracing::warn!("tenant database tasks still running after the grace period");
        }
        self.owner.shutdown(TASK_GRACE).await;
        self.db.close();
        match served {
            Ok(Ok(result)) => result.context("HTTP server failed"),
            Ok(Err(_)) => anyhow::bail!("HTTP server task ended without a result"),
            Err(_) if !server_stopped => {
                anyhow::bail!("HTTP server did not stop within {TASK_GRACE:?}")
            }
            Err(_) => anyhow::bail!("HTTP server did not finish within {TASK_GRACE:?}"),
        }
    }
}

/// Starts every subsystem of a node in order and returns once the listener is bound.
///
/// # Errors
/// The first start-up step that fails, with context naming it.
pub async fn start(config: Config) -> anyhow::Result<RunningApp> {
    let config = Arc::new(config);
    if !config.ignored_set.is_empty() {
        tracing::info!(
            variables = ?config.ignored_set,
            "ignoring variables of the original server that have no meaning here"
        );
    }
    crate::auth::self_test().context("JWT library self-test")?;

    let db = Db::connect(&config.db).await.with_context(|| {
        format!(
            "cannot connect to the metadata database at {}:{}/{}",
            config.db.host, config.db.port, config.db.name
        )
    })?;
    let applied = db.migrate().await.context("metadata database migrations")?;
    tracing::info!(applied = ?applied, "metadata schema is current");

    let cipher = Cipher::new(&config.encryption).context("encryption keys")?;
    let tenants = Tenants::new(db.clone(), cipher, config.limits.clone(), &config.tenants);
    tenants::seed_self_host(&tenants, &config.seed, &config.api, &config.db)
        .await
        .context("seeding the self-host tenant")?;

    let owner = Owner::new();
    // Pools open on first use; a change of a tenant closes its pool.
    let tenant_dbs =
        TenantDbs::with_owner(tenants.clone(), config.tenant_db.clone(), owner.child())
            .context("tenant database pools")?;

    // This run's identity: the presence replica and the membership identity.
    let node = NodeIncarnation::start(NodeId::new(config.cluster.node_name.as_str()));
    let clustered = config.cluster.is_clustered();
    // The ring over the live members names each tenant's stream owner; alone, this node.
    let ring = Arc::new(RingOwnership::new(
        node.node.clone(),
        Ring::new([node.node.clone()], DEFAULT_VNODES_PER_NODE),
    ));
    // Streams start with a tenant's first subscriber, on the node the ring names.
    let changes = PostgresChanges::new(
        tenants.clone(),
        tenant_dbs.clone(),
        config.replication.clone(),
        ring.clone(),
        &owner,
    );
    let links = PeerLinks::new();

    let fallback_tenant = config.tenants.fallback_tenant.clone();
    let hub = Hub::new();
    // A cluster of one pays nothing for peers: no interest events, no forwarding.
    let (fanout, replication): (Arc<dyn PeerFanout>, Arc<dyn PresenceReplication>) = if clustered {
        hub.set_room_events(links.clone());
        (links.clone(), links.clone())
    } else {
        (Arc::new(NoPeers), Arc::new(NoReplication))
    };
    let broadcaster = Arc::new(Broadcaster::new(hub.clone(), fanout));
    let limits = Arc::new(Limits::new(LimitsConfig::new(&config.limits)));
    let presence = Arc::new(Presence::new(
        hub.clone(),
        limits.clone(),
        replication,
        node.clone(),
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(crate::auth::VerifiedTokens::new());
    // Broadcast from the database: the ring's owner of a tenant streams its messages while
    // the tenant has sockets here or rooms on a peer.
    let peer_interest: Option<Arc<dyn TenantInterest>> =
        if clustered { Some(links.clone()) } else { None };
    let db_broadcast = DbBroadcast::new(
        DbBroadcastDeps {
            tenants: tenants.clone(),
            dbs: tenant_dbs.clone(),
            broadcaster: broadcaster.clone(),
            limits: limits.clone(),
            ownership: ring.clone(),
            interest: Arc::new(NodeInterest::new(hub.clone(), peer_interest)),
            config: config.replication.clone(),
        },
        &owner,
    );
    let authorization = Authorization::new(tenant_dbs.clone(), owner.child());
    let channels = Arc::new(ChannelContext {
        tenants: tenants.clone(),
        hub: hub.clone(),
        broadcaster: broadcaster.clone(),
        presence: presence.clone(),
        join_error_backoff: config.channel.join_error_backoff,
        claim_validators: config.api.jwt_claim_validators.clone(),
        tokens: tokens.clone(),
        draining: draining.clone(),
        changes: changes.clone(),
        authorization: authorization.clone(),
        db_broadcast: db_broadcast.clone(),
    });
    let transport = Arc::new(Transport {
        channels,
        limits: limits.clone(),
        config: config.transport.clone(),
        fallback_tenant: fallback_tenant.clone(),
        connect_error_backoff: config.transport.connect_error_backoff,
        no_channel_timeout: config.transport.no_channel_timeout,
        max_header_length: config.http.max_header_length,
        sockets: OpenSockets::new(config.http.max_connections as usize),
        owner: owner.child(),
    });
    let background = owner.child();
    background.spawn(
        "tenant changes → sockets",
        disconnect_on_tenant_changes(tenants.clone(), hub.clone()),
    );
    background.spawn("idle limit sweeper", sweep_idle_limits(limits.clone()));
    if config.janitor.enabled {
        // One node per tenant cleans it: the one the ring names.
        let ring = ring.clone();
        Janitor::new(
            tenants.clone(),
            tenant_dbs.clone(),
            config.janitor.clone(),
            move |tenant| ring.owns(tenant),
        )
        .start(&background);
    }
    background.spawn(
        "metrics cleaner",
        clean_idle_metrics(config.metrics_cleaner_schedule_timer),
    );
    let broadcast_api = Arc::new(api::BroadcastApi {
        tokens: tokens.clone(),
        tenants: tenants.clone(),
        broadcaster: broadcaster.clone(),
        limits: limits.clone(),
        claim_validators: config.api.jwt_claim_validators.clone(),
        fallback_tenant: fallback_tenant.clone(),
        body_limit: config.http.max_body_bytes,
        authorization,
    });
    // The WebSocket routes stay outside the HTTP middleware: every upgrade would otherwise pay
    // for it, and the handshake checks header lengths itself.
    let listen = config.http.listen_addr();
    let listener = bind_listener(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("listener address")?;

    // The cluster: peers (bus handler), the bus, then membership advertising the bus.
    let cluster = owner.child();
    let node_metrics = Arc::new(NodeMetrics::new(
        config.cluster.node_name.as_str(),
        config.region.as_deref(),
    ));
    let peers = Peers::new(
        PeersParts {
            me: node.clone(),
            links: links.clone(),
            broadcaster: broadcaster.clone(),
            presence: presence.clone(),
            changes: Arc::new(ChangeRouter::new(
                changes.clone(),
                links.clone(),
                clustered,
                &cluster,
            )),
            ring: ring.clone(),
            tenants: tenants.clone(),
            metrics: node_metrics.clone(),
        },
        &cluster,
    );
    add_samplers(
        &node_metrics,
        Sampled {
            transport: transport.clone(),
            hub: hub.clone(),
            presence: presence.clone(),
            changes: changes.clone(),
            peers: peers.clone(),
        },
    );
    let unspecified = |port| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
    let bus = if clustered {
        let secret = config
            .cluster
            .secret
            .clone()
            .context("CLUSTER_SECRET is required in a cluster")?;
        let bind = unspecified(config.cluster.bus_port);
        let bus = Bus::start(
            BusConfig {
                bind,
                cluster_id: config.cluster.cluster_id.clone(),
                secret,
                queue_frames: 16_384,
                request_timeout: Duration::from_secs(5),
            },
            crate::bus::node_run(&node),
            peers.clone(),
            &cluster,
        )
        .await
        .with_context(|| format!("cannot start the cluster bus on {bind}"))?;
        links.attach(bus.clone());
        Some(bus)
    } else {
        None
    };
    let http_advertised = if local_addr.ip().is_loopback() || local_addr.ip().is_unspecified() {
        unspecified(local_addr.port())
    } else {
        local_addr
    };
    let membership = Arc::new(
        Membership::start(
            &config.cluster,
            node.clone(),
            NodeAddresses {
                bus: unspecified(bus.as_ref().map_or(0, |b| b.local_addr().port())),
                http: http_advertised,
                region: config.region.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            &cluster,
        )
        .await
        .context("cluster membership")?,
    );
    if let Some(bus) = &bus {
        peers.follow(membership.clone(), bus.clone(), &cluster);
    }

    let state = ApiState {
        fallback_tenant: fallback_tenant.clone(),
        tenants: tenants.clone(),
        api: Arc::new(config.api.clone()),
        node_name: Arc::from(config.cluster.node_name.as_str()),
        region: config.region.as_deref().map(Arc::from),
        body_limit: config.http.max_body_bytes,
        cluster: Arc::new(ClusterStatusView {
            peers: peers.clone(),
            membership: membership.clone(),
        }),
        metrics: Arc::new(ClusterMetricsView {
            peers: peers.clone(),
            membership: membership.clone(),
        }),
        draining: draining.clone(),
    };
    let router = api::router(state)
        .merge(api::broadcast_routes(broadcast_api))
        .merge(crate::inspector::router())
        .layer(axum::middleware::from_fn_with_state(
            config.http.max_header_length,
            api::limit_header_length,
        ))
        .merge(transport::router(transport.clone()));

    let (stop_accepting, stop_requested) = oneshot::channel::<()>();
    let (served_tx, served) = oneshot::channel();
    let server = owner.child();
    server.spawn("http server", async move {
        // No Nagle: a join reply written right after the 101 response would otherwise wait
        // for the client's delayed ACK (tens of milliseconds per join).
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
            });
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                // Resolves on an explicit stop and when the handle is dropped.
                let _ = stop_requested.await;
            })
            .await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "HTTP server failed");
        }
        // Err only means nobody waits for the result any more.
        let _ = served_tx.send(result);
    });
    tracing::info!(addr = %local_addr, node = %config.cluster.node_name, "listening");
    Ok(RunningApp {
        local_addr,
        tenants,
        db,
        tenant_dbs,
        changes,
        db_broadcast,
        hub,
        transport,
        draining,
        membership,
        bus,
        cluster,
        owner,
        background,
        server,
        stop_accepting: Some(stop_accepting),
        served,
    })
}

/// Connections waiting to be accepted: bursts of WebSocket connects overflow the kernel's
/// default of 128 and clients then wait a whole SYN retransmit (1 s).
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Closes the sockets of a tenant whose change requires it (PROTOCOL.md 1.7: deleted,
/// reloaded, or updated in its keys, `private_only` or `suspend`); hands the new record to the
/// open sockets of any other update.
async fn disconnect_on_tenant_changes(tenants: Tenants, hub: Arc<Hub>) {
    let mut events = tenants.subscribe();
    loop {
        match events.recv().await {
            Ok(event) if event.disconnect => {
                let n = hub.disconnect_tenant(&event.tenant);
                tracing::info!(tenant = %event.tenant, change = ?event.change, sockets = n, "tenant changed; disconnecting its sockets");
            }
            Ok(event) => {
                if let (TenantChange::Updated, Some(record)) = (event.change, &event.record) {
                    let n = hub.update_tenant(&event.tenant, record);
                    tracing::debug!(tenant = %event.tenant, sockets = n, "tenant updated; sockets use the new record");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "tenant change events were missed");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// What the scrape-time samplers read.
struct Sampled {
    transport: Arc<Transport>,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    changes: PostgresChanges,
    peers: Arc<Peers>,
}

/// Registers the samplers that read each subsystem's own counters at scrape time.
fn add_samplers(metrics: &NodeMetrics, parts: Sampled) {
    let Sampled {
        transport,
        hub,
        presence,
        changes,
        peers,
    } = parts;
    metrics.add_sampler(Box::new(move |s: &mut Snapshot| {
        s.gauge(
            "realtime_connections",
            "Open WebSocket connections (handshakes in progress included)",
            &[],
            transport.sockets.open() as f64,
        );
        s.gauge(
            "realtime_rooms",
            "Rooms with local subscribers",
            &[],
            hub.room_count() as f64,
        );
        s.gauge(
            "realtime_presence_entries",
            "Presence entries known to this node, every node's included",
            &[],
            presence.entry_count() as f64,
        );
        s.gauge(
            "realtime_presence_local_channels",
            "Channels of this node that track a presence",
            &[],
            presence.local_count() as f64,
        );
        let lags = changes.replication_lags();
        s.gauge(
            "realtime_replication_streams",
            "Tenant replication streams this node owns and runs",
            &[],
            changes.running_streams().len() as f64,
        );
        for (tenant, lag) in lags {
            let label = crate::metrics::tenant_label(tenant.as_str());
            s.gauge_fold(
                "realtime_replication_lag_bytes",
                "WAL between the server's end and the position confirmed for an owned tenant's slot",
                &[("tenant", &label)],
                lag as f64,
                Fold::Max,
            );
        }
        let stats = changes.replication_stats();
        s.counter(
            "realtime_replication_slots_created_total",
            "Replication slots created",
            &[],
            stats.slots_created(),
        );
        s.counter(
            "realtime_replication_slots_dropped_total",
            "Replication slots dropped",
            &[],
            stats.slots_dropped(),
        );
        s.counter(
            "realtime_replication_lag_exceeded_total",
            "Slots recreated for holding back too much WAL (changes lost)",
            &[],
            stats.lag_exceeded(),
        );
        s.counter(
            "realtime_replication_reconnects_total",
            "Failed replication connection attempts and broken streams",
            &[],
            stats.reconnects(),
        );
        peers.sample(s);
    }));
}

/// Removes the per-tenant series of tenants without activity, every `period`
/// (`METRICS_CLEANER_SCHEDULE_TIMER_IN_MS`).
async fn clean_idle_metrics(period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let removed = crate::metrics::clean_idle_tenants();
        tracing::debug!(removed, "idle tenants' metrics removed");
    }
}

/// Drops the rate counters of tenants that went idle, so the map shrinks again.
async fn sweep_idle_limits(limits: Arc<Limits>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        limits.sweep(std::time::Instant::now());
    }
}

async fn wait_for_shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
