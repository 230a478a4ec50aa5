//! The janitor (`RUN_JANITOR`, PROTOCOL.md 9.4): on a schedule, for every tenant this node owns,
//! makes the upcoming day partitions of `realtime.messages` and drops those past the retention.
//!
//! * A run lists the tenants from the metadata database, keeps those this node owns (the ring
//!   decides in a cluster, through the `owns` closure given to [`Janitor::new`]), and cleans them
//!   in chunks of `JANITOR_CHUNK_SIZE`, at most `JANITOR_CLEANUP_MAX_CHILDREN` at once, each
//!   within `JANITOR_CLEANUP_CHILDREN_TIMEOUT` ([`plan`]). Each tenant is a task of the
//!   janitor's [`Owner`]; shutdown cancels them.
//! * A tenant is cleaned through its pool ([`TenantDbs`]; opening one runs the tenant migrations)
//!   by [`partitions::maintain`].
//! * A tenant that fails (unreachable, a statement failed, out of time) is logged with
//!   `JanitorFailedToDeleteOldMessages`; the run goes on with the others. Tenants without a
//!   database (`postgres_cdc_rls` extension) are skipped.
//! * [`Janitor::start`] runs the first time after `JANITOR_RUN_AFTER_IN_MS`, then every
//!   `JANITOR_SCHEDULE_TIMER_IN_MS`, plus up to a quarter of it when `JANITOR_SCHEDULE_RANDOMIZE`
//!   is on.

pub mod partitions;
pub mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::JanitorConfig;
use crate::db::{PgError, TenantDbError, TenantDbs};
use crate::error::{ErrorCode, OperationalError};
use crate::tasks::Owner;
use crate::tenants::{Tenant, Tenants, TenantsError};
use crate::types::TenantId;

pub use partitions::Cleaned;
pub use plan::{Bounds, Outcome};

/// Whether this node cleans a tenant (in a cluster: whether the ring names this node).
pub type Owns = Arc<dyn Fn(&TenantId) -> bool + Send + Sync>;

/// Errors of the janitor.
#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    /// The tenants could not be listed: the run did nothing.
    #[error("cannot list the tenants: {0}")]
    List(TenantsError),
    /// The tenant's database could not be reached through its pool.
    #[error("{0}")]
    Connect(TenantDbError),
    /// A statement of the maintenance failed.
    #[error("janitor step {step} failed: {source}")]
    Query {
        /// `create`, `list` or `drop`.
        step: &'static str,
        /// The Postgres error.
        source: PgError,
    },
    /// The tenant took longer than `JANITOR_CLEANUP_CHILDREN_TIMEOUT`.
    #[error("cleaning the tenant took longer than {0:?}")]
    TimedOut(Duration),
}

impl OperationalError for JanitorError {
    fn code(&self) -> ErrorCode {
        match self {
            JanitorError::List(source) => source.code(),
            JanitorError::Connect(_) | JanitorError::Query { .. } | JanitorError::TimedOut(_) => {
                ErrorCode::JanitorFailedToDeleteOldMessages
            }
        }
    }

    fn client_message(&self) -> String {
        match self {
            JanitorError::List(source) => source.client_message(),
            _ => "Realtime was unable to clean the project database".into(),
        }
    }
}

impl JanitorError {
    /// The code of the underlying cause (the pool's or the database's), for the log.
    fn cause_code(&self) -> ErrorCode {
        match self {
            JanitorError::List(source) => source.code(),
            JanitorError::Connect(source) => source.code(),
            JanitorError::Query { source, .. }
                if source.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
            {
                ErrorCode::QueryCanceled
            }
            JanitorError::Query { .. } => ErrorCode::TenantDatabaseError,
            JanitorError::TimedOut(_) => ErrorCode::QueryCanceled,
        }
    }
}

/// What one run did.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Tenants in the metadata database.
    pub tenants: usize,
    /// Tenants another node owns (left to it).
    pub not_owned: Vec<TenantId>,
    /// Tenants without a database to clean.
    pub no_database: Vec<TenantId>,
    /// Tenants cleaned, with what was done.
    pub cleaned: Vec<(TenantId, Cleaned)>,
    /// Tenants that failed (each logged with `JanitorFailedToDeleteOldMessages`).
    pub failed: Vec<(TenantId, JanitorError)>,
}

impl RunReport {
    /// What the run did for `tenant`, if it cleaned it.
    pub fn cleaned(&self, tenant: &str) -> Option<&Cleaned> {
        self.cleaned
            .iter()
            .find(|(id, _)| id.as_str() == tenant)
            .map(|(_, c)| c)
    }

    /// Why `tenant` failed, if it did.
    pub fn failure(&self, tenant: &str) -> Option<&JanitorError> {
        self.failed
            .iter()
            .find(|(id, _)| id.as_str() == tenant)
            .map(|(_, e)| e)
    }
}

/// The janitor of this node. Cheap to clone.
#[derive(Clone)]
pub struct Janitor {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: Tenants,
    dbs: TenantDbs,
    config: JanitorConfig,
    owns: Owns,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Janitor")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Janitor {
    /// A janitor over the tenants of `tenants`, cleaning through `dbs` the tenants `owns` says
    /// this node owns.
    pub fn new(
        tenants: Tenants,
        dbs: TenantDbs,
        config: JanitorConfig,
        owns: impl Fn(&TenantId) -> bool + Send + Sync + 'static,
    ) -> Janitor {
        Janitor {
            inner: Arc::new(Inner {
                tenants,
                dbs,
                config,
                owns: Arc::new(owns),
            }),
        }
    }

    /// Starts the schedule in a task of `owner`: the first run after `JANITOR_RUN_AFTER_IN_MS`,
    /// then one per period. Each run's tenants are tasks of `owner` too.
    pub fn start(&self, owner: &Owner) {
        let janitor = self.clone();
        let tasks = owner.clone();
        owner.spawn("janitor schedule", async move {
            let config = &janitor.inner.config;
            tokio::time::sleep(config.run_after).await;
            loop {
                match janitor.run(&tasks).await {
                    Ok(_) => {}
                    Err(err) => {
                        tracing::error!(error = %err, error_code = %err.code(), "janitor run failed");
                    }
                }
                let wait = plan::next_delay(
                    config.schedule_timer,
                    config.schedule_randomize,
                    rand::random::<f64>(),
                );
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Runs once: every tenant this node owns is cleaned (or fails) before it returns. Each
    /// failure is logged with `JanitorFailedToDeleteOldMessages`.
    ///
    /// # Errors
    /// [`JanitorError::List`] when the tenants cannot be listed.
    pub async fn run(&self, owner: &Owner) -> Result<RunReport, JanitorError> {
        let started = Instant::now();
        let all = self
            .inner
            .tenants
            .list()
            .await
            .map_err(JanitorError::List)?;
        let mut report = RunReport {
            tenants: all.len(),
            ..RunReport::default()
        };
        let (mine, others): (Vec<Tenant>, Vec<Tenant>) = all
            .into_iter()
            .partition(|tenant| (self.inner.owns)(&tenant.external_id));
        report.not_owned = others.into_iter().map(|t| t.external_id).collect();

        let bounds = plan::Bounds::from_config(&self.inner.config);
        let dbs = self.inner.dbs.clone();
        let ended = plan::sweep(owner, mine, bounds, |tenant: &Tenant| {
            clean(dbs.clone(), tenant.clone(), bounds.child_timeout)
        })
        .await;
        for (tenant, outcome) in ended {
            let id = tenant.external_id;
            let result = match outcome {
                Outcome::Done(result) => result,
                Outcome::TimedOut => Err(JanitorError::TimedOut(bounds.child_timeout)),
            };
            match result {
                Ok(cleaned) => {
                    if cleaned.created > 0 || !cleaned.dropped.is_empty() {
                        tracing::info!(tenant = %id, created = cleaned.created, dropped = ?cleaned.dropped, "janitor cleaned the tenant's messages");
                    }
                    report.cleaned.push((id, cleaned));
                }
                Err(JanitorError::Connect(err))
                    if matches!(err.root(), TenantDbError::NoDatabase(_)) =>
                {
                    report.no_database.push(id);
                }
                Err(err) => {
                    tracing::error!(
                        tenant = %id,
                        error_code = %err.code(),
                        cause = %err.cause_code(),
                        error = %err,
                        "janitor failed to delete old messages"
                    );
                    report.failed.push((id, err));
                }
            }
        }
        tracing::info!(
            tenants = report.tenants,
            not_owned = report.not_owned.len(),
            cleaned = report.cleaned.len(),
            failed = report.failed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "janitor run done"
        );
        Ok(report)
    }
}

/// Cleans one tenant within `budget` (the sweep's timeout stops it too; the budget makes the
/// database stop its statements as well).
async fn clean(dbs: TenantDbs, tenant: Tenant, budget: Duration) -> Result<Cleaned, JanitorError> {
    let deadline = Instant::now() + budget;
    let pool = dbs.get(&tenant).await.map_err(JanitorError::Connect)?;
    let mut client = pool.get().await.map_err(JanitorError::Connect)?;
    partitions::maintain(&mut client, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_failures_carry_the_janitor_code() {
        let timed_out = JanitorError::TimedOut(Duration::from_secs(5));
        assert_eq!(
            timed_out.code(),
            ErrorCode::JanitorFailedToDeleteOldMessages
        );
        assert_eq!(timed_out.cause_code(), ErrorCode::QueryCanceled);
        let connect = JanitorError::Connect(TenantDbError::Closed(TenantId::from("t")));
        assert_eq!(connect.code(), ErrorCode::JanitorFailedToDeleteOldMessages);
        assert_eq!(
            connect.cause_code(),
            ErrorCode::UnableToConnectToTenantDatabase
        );
        assert_eq!(
            ErrorCode::JanitorFailedToDeleteOldMessages.as_str(),
            "JanitorFailedToDeleteOldMessages"
        );
    }
}
