//! Realtime Authorization for private channels (PROTOCOL.md 8): RLS policies on
//! `realtime.messages` decide who may read (join, receive) and write (broadcast, track) a
//! private topic.
//!
//! * [`Authorization::check`] runs one [`CheckRequest`] (the SQL is in `check`) and answers a
//!   [`CheckOutcome`]; [`Permissions`] is what a channel caches of the answers (read at join and
//!   after a token refresh, write lazily at first use).
//! * **Bounded per tenant.** Checks of one tenant queue in one FIFO (at most [`MAX_QUEUED`]) and
//!   run on at most as many connections as the tenant's pool has, each runner taking up to
//!   [`BATCH`] queued checks at a time and pipelining them on one connection (one round trip per
//!   batch). So a storm of joins neither opens more connections than the pool allows nor starves
//!   the pool's other users (deadpool's own queue is FIFO, and a runner returns its connection
//!   after every batch). A check that waited [`QUEUE_WAIT`] without a connection, a full
//!   queue, and a tenant whose checks recently timed out as many times as its pool is large
//!   (in [`TIMEOUT_WINDOW`]) are answered `IncreaseConnectionPool` at once.
//! * Runners are tasks of the service's [`Owner`]; none lingers: a runner ends when the queue is
//!   empty. A check whose caller went away (its socket closed) is skipped.

mod check;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use check::{CheckFailure, CheckOutcome, CheckRequest};

use crate::db::{TenantDbError, TenantDbs, TenantPool};
use crate::error::{ErrorCode, OperationalError};
use crate::hub::Reads;
use crate::tasks::Owner;
use crate::tenants::Tenant;
use crate::types::TenantId;

/// Most checks one runner pipelines on one connection.
pub const BATCH: usize = 64;
/// Most checks of one tenant waiting for a runner.
pub const MAX_QUEUED: usize = 4096;
/// Longest a check waits in its tenant's queue (within realtime-js's 10 s join timeout, with
/// the 5 s error backoff after it).
pub const QUEUE_WAIT: Duration = Duration::from_secs(3);
/// Longest a caller waits for its check's answer, queue and run together; past it the check
/// counts as a timeout (`IncreaseConnectionPool`).
pub const ANSWER_WAIT: Duration = Duration::from_secs(4);
/// The window in which timed-out checks are counted against the pool size.
pub const TIMEOUT_WINDOW: Duration = Duration::from_secs(5);

/// The extension a permission is about: the `extension` column of `realtime.messages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    /// Broadcast messages.
    Broadcast,
    /// Presence.
    Presence,
}

impl Extension {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

/// Who a check runs as, about which topic (the transaction-local context of PROTOCOL.md 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The JWT's `role` claim.
    pub role: String,
    /// All claims, as JSON text.
    pub claims: String,
    /// The `sub` claim, or empty.
    pub sub: String,
    /// The sub_topic (what `realtime.topic()` returns).
    pub topic: String,
    /// The request headers as a JSON object (WebSocket: the upgrade's `x-*` headers).
    pub headers: String,
}

impl Subject {
    /// The subject of a channel: its claims, its sub_topic and the socket's `x-*` headers.
    pub fn new(claims: &crate::auth::Claims, topic: &str, headers: &str) -> Subject {
        Subject {
            role: claims.role.clone(),
            claims: serde_json::Value::Object(claims.all.clone()).to_string(),
            sub: claims.sub.clone().unwrap_or_default(),
            topic: topic.to_string(),
            headers: headers.to_string(),
        }
    }
}

/// What a private channel knows of its permissions: `None` until evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Read broadcasts (receive them).
    pub broadcast_read: Option<bool>,
    /// Read presence (`presence_state`, `presence_diff`).
    pub presence_read: Option<bool>,
    /// Send broadcasts.
    pub broadcast_write: Option<bool>,
    /// Track presence.
    pub presence_write: Option<bool>,
}

impl Permissions {
    /// Everything allowed: a public channel.
    pub const PUBLIC: Permissions = Permissions {
        broadcast_read: Some(true),
        presence_read: Some(true),
        broadcast_write: Some(true),
        presence_write: Some(true),
    };

    /// The extensions whose read a join checks: broadcast, plus presence when enabled.
    pub fn reads_to_check(presence_enabled: bool) -> Vec<Extension> {
        if presence_enabled {
            vec![Extension::Broadcast, Extension::Presence]
        } else {
            vec![Extension::Broadcast]
        }
    }

    /// The permissions a read check established.
    pub fn from_reads(outcome: &CheckOutcome) -> Permissions {
        Permissions {
            broadcast_read: outcome.broadcast_read,
            presence_read: outcome.presence_read,
            broadcast_write: None,
            presence_write: None,
        }
    }

    /// Whether a join may proceed: broadcast read or presence read (PROTOCOL.md 8).
    pub fn may_join(&self) -> bool {
        self.broadcast_read == Some(true) || self.presence_read == Some(true)
    }

    /// Whether a read permission granted in `self` is refused in `next` (a refresh that
    /// closes the channel).
    pub fn loses_read(&self, next: &Permissions) -> bool {
        let lost =
            |before: Option<bool>, after: Option<bool>| before == Some(true) && after != Some(true);
        lost(self.broadcast_read, next.broadcast_read)
            || lost(self.presence_read, next.presence_read)
    }

    /// Merges what a check found into what is known.
    pub fn merge(&mut self, outcome: &CheckOutcome, write: Option<Extension>) {
        if outcome.broadcast_read.is_some() {
            self.broadcast_read = outcome.broadcast_read;
        }
        if outcome.presence_read.is_some() {
            self.presence_read = outcome.presence_read;
        }
        match write {
            Some(Extension::Broadcast) => self.broadcast_write = outcome.write,
            Some(Extension::Presence) => self.presence_write = outcome.write,
            None => {}
        }
    }

    /// What the hub may deliver to the channel.
    pub fn reads(&self) -> Reads {
        let mut reads = Reads::NONE;
        if self.broadcast_read == Some(true) {
            reads = reads.with(Reads::BROADCAST);
        }
        if self.presence_read == Some(true) {
            reads = reads.with(Reads::PRESENCE);
        }
        reads
    }
}

/// Which bound refused a check with `IncreaseConnectionPool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    /// [`MAX_QUEUED`] checks of the tenant were waiting.
    QueueFull,
    /// The check found no connection, or no answer, in time (counted as a timeout).
    Waited,
    /// The tenant's checks timed out as often as its pool is large in [`TIMEOUT_WINDOW`].
    RecentTimeouts,
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overload::QueueFull => "the check queue is full",
            Overload::Waited => "no connection or answer in time",
            Overload::RecentTimeouts => "recent checks timed out as often as the pool is large",
        })
    }
}

/// Why a check has no answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthorizationError {
    /// The tenant database could not be reached, or its pool gave no connection.
    #[error("authorization check: {0}")]
    Database(Arc<TenantDbError>),
    /// The tenant's check queue is full, or the check waited too long for a connection, or
    /// the tenant's checks keep timing out.
    #[error("authorization checks of tenant {tenant} cannot run in time: {why}")]
    Overloaded {
        /// The tenant.
        tenant: TenantId,
        /// Which bound was hit.
        why: Overload,
    },
    /// No partition of `realtime.messages` for now.
    #[error("realtime.messages has no partition for now in the database of tenant {0}")]
    MissingPartition(TenantId),
    /// A check statement was cancelled by `statement_timeout`.
    #[error("authorization check cancelled by the statement timeout: {0}")]
    Timeout(String),
    /// The subject's statements failed (a role that does not exist, a policy that raises):
    /// treated as refused.
    #[error("authorization policy check failed ({sqlstate}): {message}")]
    Policy {
        /// SQLSTATE.
        sqlstate: String,
        /// The Postgres message.
        message: String,
    },
    /// The server's own statements failed.
    #[error("authorization check query failed: {0}")]
    Query(String),
    /// The service is shutting down.
    #[error("authorization checks are shut down")]
    ShuttingDown,
}

/// Equal when of the same kind with the same text (the database error inside is not
/// comparable itself).
impl PartialEq for AuthorizationError {
    fn eq(&self, other: &AuthorizationError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl AuthorizationError {
    fn from_failure(tenant: &TenantId, failure: CheckFailure) -> AuthorizationError {
        match failure {
            CheckFailure::MissingPartition => AuthorizationError::MissingPartition(tenant.clone()),
            CheckFailure::Timeout(m) => AuthorizationError::Timeout(m),
            CheckFailure::Policy { sqlstate, message } => {
                AuthorizationError::Policy { sqlstate, message }
            }
            CheckFailure::Query(m) => AuthorizationError::Query(m),
        }
    }

    /// Whether the error counts as a database timeout (toward [`TIMEOUT_WINDOW`]).
    fn is_timeout(&self) -> bool {
        match self {
            AuthorizationError::Timeout(_) => true,
            AuthorizationError::Overloaded { why, .. } => *why == Overload::Waited,
            AuthorizationError::Database(e) => {
                matches!(e.root(), TenantDbError::PoolExhausted { .. })
            }
            _ => false,
        }
    }

    /// True when the check ran and the subject's own statements failed: a refusal.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AuthorizationError::Policy { .. })
    }
}

impl OperationalError for AuthorizationError {
    /// The code clients see (PROTOCOL.md 3.4); a policy failure is logged as `RlsPolicyError`
    /// and shown as `Unauthorized` by the join.
    fn code(&self) -> ErrorCode {
        match self {
            AuthorizationError::Database(e) => match e.code() {
                ErrorCode::UnableToConnectToTenantDatabase => ErrorCode::UnableToConnectToProject,
                code => code,
            },
            AuthorizationError::Overloaded { .. } => ErrorCode::IncreaseConnectionPool,
            AuthorizationError::MissingPartition(_) => ErrorCode::MissingPartition,
            AuthorizationError::Timeout(_) => ErrorCode::QueryCanceled,
            AuthorizationError::Policy { .. } => ErrorCode::RlsPolicyError,
            AuthorizationError::Query(_) => ErrorCode::UnableToSetPolicies,
            AuthorizationError::ShuttingDown => ErrorCode::RealtimeRestarting,
        }
    }

    fn client_message(&self) -> String {
        match self {
            AuthorizationError::Database(e) => e.client_message(),
            AuthorizationError::Overloaded { .. } => {
                "Please increase your connection pool size".into()
            }
            AuthorizationError::MissingPartition(_) => {
                "Realtime was unable to find the expected messages partition".into()
            }
            AuthorizationError::Timeout(m) => m.clone(),
            AuthorizationError::Policy { .. } | AuthorizationError::Query(_) => {
                "Realtime was unable to connect to the project database".into()
            }
            AuthorizationError::ShuttingDown => "Realtime is restarting, please standby".into(),
        }
    }

    /// `Code: message`, except an unexpected check failure, shown without a code (3.4).
    fn client_reason(&self) -> String {
        match self {
            AuthorizationError::Query(_) => self.client_message(),
            _ => format!("{}: {}", self.code(), self.client_message()),
        }
    }
}

type Reply = oneshot::Sender<Result<CheckOutcome, AuthorizationError>>;

struct Job {
    request: CheckRequest,
    queued_at: Instant,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    runners: usize,
    timeouts: VecDeque<Instant>,
}

impl Queue {
    fn recent_timeouts(&mut self, now: Instant) -> usize {
        while self
            .timeouts
            .front()
            .is_some_and(|at| now.duration_since(*at) > TIMEOUT_WINDOW)
        {
            self.timeouts.pop_front();
        }
        self.timeouts.len()
    }
}

/// The authorization checks of this node. Cheap to clone.
#[derive(Clone)]
pub struct Authorization {
    inner: Arc<Inner>,
}

struct Inner {
    dbs: TenantDbs,
    owner: Owner,
    // std Mutex: short queue operations only, never held across an await.
    queues: Mutex<HashMap<TenantId, Queue>>,
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization").finish_non_exhaustive()
    }
}

impl Authorization {
    /// Builds the service; its runners are tasks of `owner`.
    pub fn new(dbs: TenantDbs, owner: Owner) -> Authorization {
        Authorization {
            inner: Arc::new(Inner {
                dbs,
                owner,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Queue>> {
        self.inner.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one check for `tenant` (opening its pool if needed) through the tenant's queue.
    ///
    /// # Errors
    /// [`AuthorizationError`]: the pool, the queue bounds, a missing partition, a timeout, the
    /// subject's failing statements.
    pub async fn check(
        &self,
        tenant: &Tenant,
        request: CheckRequest,
    ) -> Result<CheckOutcome, AuthorizationError> {
        let id = &tenant.external_id;
        let pool = self
            .inner
            .dbs
            .get(tenant)
            .await
            .map_err(|e| AuthorizationError::Database(Arc::new(e)))?;
        let (reply, answer) = oneshot::channel();
        let start_runner = {
            let mut queues = self.queues();
            let queue = queues.entry(id.clone()).or_default();
            let now = Instant::now();
            if queue.recent_timeouts(now) >= pool.max_size().max(1) {
                return Err(AuthorizationError::Overloaded {
                    tenant: id.clone(),
                    why: Overload::RecentTimeouts,
                });
            }
            if queue.jobs.len() >= MAX_QUEUED {
                return Err(AuthorizationError::Overloaded {
                    tenant: id.clone(),
                    why: Overload::QueueFull,
                });
            }
            queue.jobs.push_back(Job {
                request,
                queued_at: now,
                reply,
            });
            let start = queue.runners < pool.max_size().max(1);
            if start {
                queue.runners += 1;
            }
            start
        };
        if start_runner {
            let service = self.clone();
            self.inner
                .owner
                .spawn("authorization checks", service.run(id.clone(), pool));
        }
        let result = match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(result)) => result,
            // The runner was stopped with the node.
            Ok(Err(_)) => Err(AuthorizationError::ShuttingDown),
            Err(_) => Err(AuthorizationError::Overloaded {
                tenant: id.clone(),
                why: Overload::Waited,
            }),
        };
        if let Err(err) = &result
            && err.is_timeout()
        {
            let mut queues = self.queues();
            if let Some(queue) = queues.get_mut(id) {
                queue.timeouts.push_back(Instant::now());
            }
        }
        result
    }

    /// Takes the next batch of `tenant`'s queue, answering the checks that waited too long;
    /// `None` (and one runner less) when the queue is empty.
    fn next_batch(&self, tenant: &TenantId) -> Option<Vec<Job>> {
        let mut queues = self.queues();
        let queue = queues.get_mut(tenant)?;
        let now = Instant::now();
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(job) = queue.jobs.pop_front() else {
                break;
            };
            if job.reply.is_closed() {
                continue;
            }
            if now.duration_since(job.queued_at) > QUEUE_WAIT {
                let _ = job.reply.send(Err(AuthorizationError::Overloaded {
                    tenant: tenant.clone(),
                    why: Overload::Waited,
                }));
                continue;
            }
            batch.push(job);
        }
        if batch.is_empty() {
            queue.runners -= 1;
            if queue.runners == 0 && queue.jobs.is_empty() && queue.timeouts.is_empty() {
                queues.remove(tenant);
            }
            return None;
        }
        Some(batch)
    }

    /// One runner: batches of the tenant's queue, each pipelined on one connection, until the
    /// queue is empty.
    async fn run(self, tenant: TenantId, pool: TenantPool) {
        while let Some(batch) = self.next_batch(&tenant) {
            let client = match tokio::time::timeout(QUEUE_WAIT, pool.get()).await {
                Ok(Ok(client)) => client,
                Err(_) => {
                    for job in batch {
                        let _ = job.reply.send(Err(AuthorizationError::Overloaded {
                            tenant: tenant.clone(),
                            why: Overload::Waited,
                        }));
                    }
                    continue;
                }
                Ok(Err(err)) => {
                    let err = Arc::new(err);
                    for job in batch {
                        let _ = job
                            .reply
                            .send(Err(AuthorizationError::Database(err.clone())));
                    }
                    continue;
                }
            };
            let requests: Vec<&CheckRequest> = batch.iter().map(|j| &j.request).collect();
            match check::run_batch(&client, &requests).await {
                Ok(outcomes) => {
                    for (job, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = job.reply.send(
                            outcome.map_err(|f| AuthorizationError::from_failure(&tenant, f)),
                        );
                    }
                }
                Err(err) => {
                    let failure =
                        AuthorizationError::from_failure(&tenant, check::own_failure(&err));
                    for job in batch {
                        let _ = job.reply.send(Err(failure.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(b: Option<bool>, p: Option<bool>, w: Option<bool>) -> CheckOutcome {
        CheckOutcome {
            broadcast_read: b,
            presence_read: p,
            write: w,
        }
    }

    #[test]
    fn a_join_needs_broadcast_or_presence_read() {
        let join = |b, p| Permissions::from_reads(&outcome(b, p, None)).may_join();
        assert!(join(Some(true), None));
        assert!(join(Some(false), Some(true)));
        assert!(join(Some(true), Some(false)));
        assert!(!join(Some(false), Some(false)));
        assert!(!join(Some(false), None));
        assert_eq!(
            Permissions::reads_to_check(true),
            vec![Extension::Broadcast, Extension::Presence]
        );
        assert_eq!(
            Permissions::reads_to_check(false),
            vec![Extension::Broadcast]
        );
    }

    #[test]
    fn a_refresh_loses_read_when_a_granted_read_is_refused() {
        let p = |b, pr| Permissions::from_reads(&outcome(b, pr, None));
        assert!(p(Some(true), Some(true)).loses_read(&p(Some(true), Some(false))));
        assert!(p(Some(true), None).loses_read(&p(Some(false), None)));
        assert!(!p(Some(false), Some(true)).loses_read(&p(Some(true), Some(true))));
        assert!(!p(Some(false), None).loses_read(&p(Some(false), None)));
        // Presence read never evaluated before: nothing to lose.
        assert!(!p(Some(true), None).loses_read(&p(Some(true), Some(false))));
    }

    #[test]
    fn merging_keeps_what_a_check_did_not_ask() {
        let mut known = Permissions::from_reads(&outcome(Some(true), None, None));
        known.merge(
            &outcome(None, None, Some(false)),
            Some(Extension::Broadcast),
        );
        assert_eq!(known.broadcast_read, Some(true));
        assert_eq!(known.broadcast_write, Some(false));
        known.merge(
            &outcome(None, Some(true), Some(true)),
            Some(Extension::Presence),
        );
        assert_eq!(known.presence_read, Some(true));
        assert_eq!(known.presence_write, Some(true));
        assert_eq!(known.broadcast_write, Some(false));
        assert_eq!(known.reads(), Reads::BROADCAST.with(Reads::PRESENCE));
        let presence_only = Permissions::from_reads(&outcome(Some(false), Some(true), None));
        assert_eq!(presence_only.reads(), Reads::PRESENCE);
        assert_eq!(Permissions::PUBLIC.reads(), Reads::ALL);
    }

    #[test]
    fn errors_carry_the_protocol_codes() {
        let tenant = TenantId::from("t");
        let cases: Vec<(AuthorizationError, &str)> = vec![
            (
                AuthorizationError::MissingPartition(tenant.clone()),
                "MissingPartition: Realtime was unable to find the expected messages partition",
            ),
            (
                AuthorizationError::Overloaded {
                    tenant: tenant.clone(),
                    why: Overload::QueueFull,
                },
                "IncreaseConnectionPool: Please increase your connection pool size",
            ),
            (
                AuthorizationError::Database(Arc::new(TenantDbError::PoolExhausted {
                    tenant: tenant.clone(),
                    timeout: Duration::from_secs(1),
                    size: 2,
                })),
                "IncreaseConnectionPool: Please increase your connection pool size",
            ),
            (
                AuthorizationError::Database(Arc::new(TenantDbError::Closed(tenant.clone()))),
                "UnableToConnectToProject: Realtime was unable to connect to the project database",
            ),
            (
                AuthorizationError::Timeout("canceling statement due to statement timeout".into()),
                "QueryCanceled: canceling statement due to statement timeout",
            ),
            (
                AuthorizationError::Query("relation does not exist".into()),
                "Realtime was unable to connect to the project database",
            ),
        ];
        for (err, reason) in cases {
            assert_eq!(err.client_reason(), reason, "{err:?}");
        }
        let policy = AuthorizationError::Policy {
            sqlstate: "P0001".into(),
            message: "boom".into(),
        };
        assert!(policy.is_refusal());
        assert_eq!(policy.code(), ErrorCode::RlsPolicyError);
    }

    #[test]
    fn timeouts_are_counted_within_the_window() {
        let mut queue = Queue::default();
        let start = Instant::now();
        queue.timeouts.push_back(start);
        queue.timeouts.push_back(start + Duration::from_secs(1));
        assert_eq!(queue.recent_timeouts(start + Duration::from_secs(2)), 2);
        assert_eq!(
            queue.recent_timeouts(start + Duration::from_millis(5500)),
            1
        );
        assert_eq!(queue.recent_timeouts(start + Duration::from_secs(7)), 0);
    }
}
