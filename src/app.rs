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

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::db::Db;
use crate::tenants::{self, Cipher, Tenants};

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

    /// Stops accepting connections, lets in-flight requests finish, then closes the DB pool.
    ///
    /// # Errors
    /// When the HTTP server task failed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
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

    let state = ApiState {
        tenants: tenants.clone(),
        api: Arc::new(config.api.clone()),
        node_name: Arc::from(config.cluster.node_name.as_str()),
        region: config.region.as_deref().map(Arc::from),
        body_limit: config.http.max_body_bytes,
    };
    let router = api::router(state);

    let listen = config.http.listen_addr();
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr().context("listener address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
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
        stop: Some(stop),
        server,
    })
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
