//! Wiring: builds every subsystem from `Config`, starts them in order and owns shutdown.
//!
//! Start-up order: configuration → logging → JWT self-test → metadata DB pool and migrations →
//! tenant registry → self-host seed → HTTP listener. Any failure before the listener runs ends
//! the process with a clear message and a non-zero exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::broadcast::{Broadcaster, NoPeers};
use crate::channel::ChannelContext;
use crate::config::Config;
use crate::db::Db;
use crate::hub::Hub;
use crate::limits::{Limits, LimitsConfig};
use crate::presence::{NoReplication, Presence};
use crate::tenants::{self, Cipher, TenantChange, Tenants};
use crate::transport::{self, Transport};
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

/// A started node: its HTTP listener and subsystems.
#[derive(Debug)]
pub struct RunningApp {
    local_addr: SocketAddr,
    tenants: Tenants,
    db: Db,
    hub: Arc<Hub>,
    transport: Arc<Transport>,
    draining: Arc<AtomicBool>,
    sockets_stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
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

    /// Returns this node's hub (rooms and connections).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Refuses new joins, closes every socket (1001), stops accepting connections, lets
    /// in-flight requests finish, then closes the DB pool.
    ///
    /// # Errors
    /// When the HTTP server task failed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.draining.store(true, Ordering::Relaxed);
        // Err only means no socket is listening.
        let _ = self.sockets_stop.send(true);
        // Give every socket task the moment it needs to send its close frame (1001).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.transport.open_sockets.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            // Err means the server already stopped on its own; the join below reports why.
            let _ = stop.send(());
        }
        let served = (&mut self.server)
            .await
            .context("HTTP server task panicked")?;
        self.db.close();
        served.context("HTTP server failed")
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
    let tenants = Tenants::new(
        db.clone(),
        cipher,
        config.limits.clone(),
        config.channel.tenant_cache_expiration,
    );
    tenants::seed_self_host(&tenants, &config.seed, &config.api, &config.db)
        .await
        .context("seeding the self-host tenant")?;

    let fallback_tenant = config
        .transport
        .fallback_tenant
        .as_deref()
        .map(crate::types::TenantId::from);
    let state = ApiState {
        fallback_tenant: fallback_tenant.clone(),
        tenants: tenants.clone(),
        api: Arc::new(config.api.clone()),
        node_name: Arc::from(config.cluster.node_name.as_str()),
        region: config.region.as_deref().map(Arc::from),
        body_limit: config.http.max_body_bytes,
    };
    let hub = Hub::new();
    let broadcaster = Arc::new(Broadcaster::new(hub.clone(), Arc::new(NoPeers)));
    let limits = Arc::new(Limits::new(LimitsConfig::new(&config.channel)));
    // This run's identity, for presence now and membership later.
    let node = NodeIncarnation::start(NodeId::new(config.cluster.node_name.as_str()));
    let presence = Arc::new(Presence::new(
        hub.clone(),
        limits.clone(),
        Arc::new(NoReplication),
        node.clone(),
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let (sockets_stop, sockets_stopped) = watch::channel(false);
    let channels = Arc::new(ChannelContext {
        tenants: tenants.clone(),
        hub: hub.clone(),
        broadcaster: broadcaster.clone(),
        presence,
        join_error_backoff: config.channel.join_error_backoff,
        claim_validators: config.api.jwt_claim_validators.clone(),
        draining: draining.clone(),
    });
    let transport = Arc::new(Transport {
        channels,
        limits: limits.clone(),
        config: config.transport.clone(),
        fallback_tenant: fallback_tenant.clone(),
        connect_error_backoff: config.channel.connect_error_backoff,
        no_channel_timeout: config.channel.no_channel_timeout,
        max_connections: config.http.max_connections as usize,
        max_header_length: config.http.max_header_length,
        open_sockets: AtomicUsize::new(0),
        shutdown: sockets_stopped,
    });
    let background = vec![
        tokio::spawn(disconnect_on_tenant_changes(tenants.clone(), hub.clone())),
        tokio::spawn(sweep_idle_limits(limits.clone())),
    ];
    let broadcast_api = Arc::new(api::BroadcastApi {
        tenants: tenants.clone(),
        broadcaster: broadcaster.clone(),
        limits: limits.clone(),
        claim_validators: config.api.jwt_claim_validators.clone(),
        fallback_tenant: config
            .transport
            .fallback_tenant
            .as_deref()
            .map(crate::types::TenantId::from),
        body_limit: config.http.max_body_bytes,
    });
    // The WebSocket routes stay outside the HTTP middleware: every upgrade would otherwise pay
    // for it, and the handshake checks header lengths itself.
    let router = api::router(state)
        .merge(api::broadcast_routes(broadcast_api))
        .layer(axum::middleware::from_fn_with_state(
            config.http.max_header_length,
            api::limit_header_length,
        ))
        .merge(transport::router(transport.clone()));

    let listen = config.http.listen_addr();
    let listener = bind_listener(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("listener address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // No Nagle: a join reply written right after the 101 response would otherwise wait
        // for the client's delayed ACK (tens of milliseconds per join).
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
            });
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                // Resolves on an explicit stop and when the handle is dropped.
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(addr = %local_addr, node = %config.cluster.node_name, "listening");
    Ok(RunningApp {
        local_addr,
        tenants,
        db,
        hub,
        transport,
        draining,
        sockets_stop,
        background,
        stop: Some(stop),
        server,
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

/// Closes the sockets of a tenant whose record changed in a way sockets must see (PROTOCOL.md
/// 1.7: deleted, reloaded, or updated).
async fn disconnect_on_tenant_changes(tenants: Tenants, hub: Arc<Hub>) {
    let mut events = tenants.subscribe();
    loop {
        match events.recv().await {
            Ok(event) => {
                if matches!(
                    event.change,
                    TenantChange::Updated | TenantChange::Deleted | TenantChange::Reloaded
                ) {
                    let n = hub.disconnect_tenant(&event.tenant);
                    tracing::info!(tenant = %event.tenant, change = ?event.change, sockets = n, "tenant changed; disconnecting its sockets");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "tenant change events were missed");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
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
