//! One tenant's replication stream: an owned task, its handle and its status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent, TlsConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::sql::{self, SlotState};
use super::{
    APPLICATION_NAME, Backoff, LossReason, Lsn, ReplicationError, ReplicationTarget, SlotName,
    StreamEvent, pg_time,
};
use crate::config::ReplicationConfig;
use crate::error::{ErrorCode, OperationalError};
use crate::tasks::Owner;

/// How long [`StreamHandle::shutdown`] waits for the final status update and the close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a reconnect waits for the previous walsender to let go of the slot.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Counters of the replication streams (exported by the metrics step).
#[derive(Debug, Default)]
pub struct ReplicationStats {
    lag_exceeded: AtomicU64,
    slots_created: AtomicU64,
    slots_dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl ReplicationStats {
    /// Slots recreated because they held back more WAL than allowed.
    pub fn lag_exceeded(&self) -> u64 {
        self.lag_exceeded.load(Ordering::Relaxed)
    }

    /// Slots created (first use, or recreated after a loss).
    pub fn slots_created(&self) -> u64 {
        self.slots_created.load(Ordering::Relaxed)
    }

    /// Slots dropped (lag bound, invalidation, end of the retain window).
    pub fn slots_dropped(&self) -> u64 {
        self.slots_dropped.load(Ordering::Relaxed)
    }

    /// Failed connection attempts and broken streams.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(super) fn count_dropped(&self) {
        self.slots_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a stream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStatus {
    /// Preparing the slot or connecting.
    Starting,
    /// Streaming from `start_lsn` on.
    Streaming {
        /// The position it resumed from.
        start_lsn: Lsn,
    },
    /// The last attempt failed; the next one follows after `delay`.
    Retrying {
        /// Why it failed.
        error: ReplicationError,
        /// Failed attempts in a row.
        attempt: u32,
        /// The wait before the next one.
        delay: Duration,
    },
    /// The stream ended (shut down, or its consumer went away).
    Stopped,
}

/// The replication stream of one tenant database.
#[derive(Debug)]
pub struct TenantStream;

impl TenantStream {
    /// Starts the stream as a task of a child of `owner` and returns its handle and its
    /// events (a bounded channel: when it is full, the stream waits).
    pub fn spawn(
        owner: &Owner,
        target: ReplicationTarget,
        config: &ReplicationConfig,
        stats: Arc<ReplicationStats>,
    ) -> (StreamHandle, mpsc::Receiver<StreamEvent>) {
        // Both rustls providers are compiled in (pgwire-replication enables rustls's defaults);
        // without a process-wide choice, `ClientConfig::builder()` panics. Already set: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let owner = owner.child();
        let (events, receiver) = mpsc::channel(config.channel_capacity.get());
        let (confirmed, confirmed_rx) = watch::channel(Lsn::ZERO);
        let shared = Arc::new(Shared {
            slot: target.slot.clone(),
            confirmed,
            server_end: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            status: watch::channel(StreamStatus::Starting).0,
            stop: CancellationToken::new(),
            owner: owner.clone(),
        });
        let task = Task {
            target,
            config: config.clone(),
            shared: shared.clone(),
            events,
            stats,
            confirmed_rx,
            had_slot: false,
            reportable: Lsn::ZERO,
            last_commit_end: Lsn::ZERO,
            in_txn: false,
        };
        owner.spawn("replication stream", task.run());
        (StreamHandle { shared }, receiver)
    }
}

#[derive(Debug)]
struct Shared {
    slot: SlotName,
    confirmed: watch::Sender<Lsn>,
    /// The server's WAL end, as its last keepalive or data message said (0: not yet known).
    server_end: AtomicU64,
    /// The position last reported to the server as applied (the slot's flush position).
    reported: AtomicU64,
    status: watch::Sender<StreamStatus>,
    stop: CancellationToken,
    owner: Owner,
}

/// Controls a running stream; cheap to clone.
#[derive(Clone, Debug)]
pub struct StreamHandle {
    shared: Arc<Shared>,
}

impl StreamHandle {
    /// The stream's slot.
    pub fn slot(&self) -> &SlotName {
        &self.shared.slot
    }

    /// Acknowledges everything up to `lsn` (a commit's `end_lsn`), once that transaction was
    /// handed to every subscriber queue. Only confirmed positions are reported to Postgres (and
    /// never beyond the last commit handed out); lower values than before are ignored.
    pub fn confirm(&self, lsn: Lsn) {
        self.shared.confirmed.send_if_modified(|current| {
            let raise = lsn > *current;
            if raise {
                *current = lsn;
            }
            raise
        });
    }

    /// The highest position confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        *self.shared.confirmed.borrow()
    }

    /// How far the position reported to the server trails the server's WAL end, in bytes
    /// (`None` until the server has sent its position). This is the slot's replication lag.
    pub fn lag_bytes(&self) -> Option<u64> {
        let end = self.shared.server_end.load(Ordering::Relaxed);
        (end > 0).then(|| end.saturating_sub(self.shared.reported.load(Ordering::Relaxed)))
    }

    /// The stream's current status.
    pub fn status(&self) -> StreamStatus {
        self.shared.status.borrow().clone()
    }

    /// Watches the stream's status.
    pub fn watch_status(&self) -> watch::Receiver<StreamStatus> {
        self.shared.status.subscribe()
    }

    /// Whether the stream's task has ended.
    pub fn is_stopped(&self) -> bool {
        matches!(*self.shared.status.borrow(), StreamStatus::Stopped)
    }

    /// Stops streaming: reports the confirmed position in a final status update, closes the
    /// replication and SQL connections, and waits for the task to end. The slot is kept.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let mut status = self.shared.status.subscribe();
        let _ = tokio::time::timeout(
            SHUTDOWN_GRACE,
            status.wait_for(|s| matches!(s, StreamStatus::Stopped)),
        )
        .await;
        self.shared.owner.shutdown(Duration::from_secs(1)).await;
    }
}

/// Marks the stream stopped however its task ends (also when its owner cancels it).
struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.status.send_replace(StreamStatus::Stopped);
    }
}

/// How a streaming session ended without an error.
enum Outcome {
    /// Shut down, or the consumer went away.
    Stopped,
    /// The slot must be checked again (lag bound, slot gone): reconnect at once.
    Reconnect,
}

/// The consumer is gone or a shutdown was asked for.
struct Stop;

struct Task {
    target: ReplicationTarget,
    config: ReplicationConfig,
    shared: Arc<Shared>,
    events: mpsc::Sender<StreamEvent>,
    stats: Arc<ReplicationStats>,
    confirmed_rx: watch::Receiver<Lsn>,
    /// The slot existed for this stream once (so its disappearance is a loss).
    had_slot: bool,
    /// The highest position that may be reported to Postgres.
    reportable: Lsn,
    /// The highest `end_lsn` of a commit handed downstream.
    last_commit_end: Lsn,
    /// A `Begin` was handed downstream and its `Commit` not yet.
    in_txn: bool,
}

impl Task {
    async fn run(mut self) {
        let _stopped = StoppedOnDrop(self.shared.clone());
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        while !self.shared.stop.is_cancelled() {
            let mut connected = false;
            match self.session(&mut connected).await {
                Ok(Outcome::Stopped) => break,
                Ok(Outcome::Reconnect) => {
                    backoff.reset();
                    let error = ReplicationError::Stream {
                        message: "closed to recreate the replication slot".into(),
                    };
                    if self
                        .emit(StreamEvent::Disconnected { error })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(error) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    if connected {
                        backoff.reset();
                        self.in_txn = false;
                        if self
                            .emit(StreamEvent::Disconnected {
                                error: error.clone(),
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error_code = %error.code(),
                        slot = %self.target.slot,
                        db = %self.target.dbname,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "replication stream unavailable"
                    );
                    self.set_status(StreamStatus::Retrying {
                        error,
                        attempt: backoff.attempts(),
                        delay,
                    });
                    tokio::select! {
                        () = self.shared.stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn set_status(&self, status: StreamStatus) {
        self.shared.status.send_replace(status);
    }

    /// Hands one event downstream, waiting while the channel is full.
    async fn emit(&mut self, event: StreamEvent) -> Result<(), Stop> {
        tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => Err(Stop),
            sent = self.events.send(event) => sent.map_err(|_| Stop),
        }
    }

    /// One connection: prepare the slot, stream until something ends it.
    async fn session(&mut self, connected: &mut bool) -> Result<Outcome, ReplicationError> {
        self.set_status(StreamStatus::Starting);
        let sql = sql::connect(&self.target, &self.shared.owner).await?;
        sql::check_publication(&sql, &self.target.publication).await?;
        if self.target.temporary_slot {
            return self.temporary_session(&sql, connected).await;
        }
        let Ok(state) = self.prepare_slot(&sql).await? else {
            return Ok(Outcome::Stopped);
        };
        let start = state.confirmed_flush.max(self.reportable);
        self.reportable = start;
        self.shared.reported.store(start.0, Ordering::Relaxed);

        let config = self.replication_config(start);
        let mut repl = ReplicationClient::connect(config)
            .await
            .map_err(|e| self.stream_error(e))?;
        tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => {
                repl.stop();
                return Ok(Outcome::Stopped);
            }
            started = repl.wait_started() => started.map_err(|e| self.stream_error(e))?,
        }
        *connected = true;
        self.set_status(StreamStatus::Streaming { start_lsn: start });
        tracing::info!(slot = %self.target.slot, db = %self.target.dbname, %start, "replication stream started");
        self.stream(&sql, &mut repl, start).await
    }

    /// The replication connection's settings for this target, starting (and acknowledging)
    /// at `start`.
    fn replication_config(&self, start: Lsn) -> pgwire_replication::ReplicationConfig {
        let tls = if self.target.tls {
            TlsConfig::require()
        } else {
            TlsConfig::disabled()
        };
        pgwire_replication::ReplicationConfig::new(
            self.target.host.clone(),
            self.target.user.clone(),
            self.target.password.expose(),
            self.target.dbname.clone(),
            self.target.slot.as_str(),
            self.target.publication.clone(),
        )
        .with_port(self.target.port)
        .with_tls(tls)
        .with_start_lsn(start)
        .with_ack_lsn(start)
        .with_status_interval(self.config.status_interval)
        .with_buffer_size(self.config.channel_capacity.get())
        .with_application_name(APPLICATION_NAME)
    }

    /// One session on a temporary slot: the replication connection creates the slot
    /// (`CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL pgoutput`) and streams from the point
    /// it was created at; the slot goes with the session. A slot of that name already there
    /// belongs to another session (another node): `SlotBeingUsed`, retried with backoff.
    async fn temporary_session(
        &mut self,
        sql: &tokio_postgres::Client,
        connected: &mut bool,
    ) -> Result<Outcome, ReplicationError> {
        // A new slot starts at its creation point: Postgres streams from there whatever
        // earlier position START_REPLICATION names.
        let config = self.replication_config(Lsn::ZERO);
        let mut repl = ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| self.stream_error(e))?;
        let create = format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            self.target.slot
        );
        let rows = tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => return Ok(Outcome::Stopped),
            rows = repl.simple_query(&create) => rows.map_err(|e| self.stream_error(e))?,
        };
        let start = rows
            .first()
            .and_then(|row| row.get(1).cloned().flatten())
            .and_then(|text| Lsn::parse(std::str::from_utf8(&text).ok()?).ok())
            .unwrap_or(Lsn::ZERO);
        self.stats.slots_created.fetch_add(1, Ordering::Relaxed);
        repl.start().await.map_err(|e| self.stream_error(e))?;
        tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => {
                repl.stop();
                return Ok(Outcome::Stopped);
            }
            started = repl.wait_started() => started.map_err(|e| self.stream_error(e))?,
        }
        self.reportable = self.reportable.max(start);
        *connected = true;
        self.set_status(StreamStatus::Streaming { start_lsn: start });
        tracing::info!(slot = %self.target.slot, db = %self.target.dbname, %start, "replication stream started on a temporary slot");
        self.stream(sql, &mut repl, start).await
    }

    /// Makes sure the slot exists, is free and within the lag bound; recreates it (and tells
    /// the consumer that changes were lost) when it is not. `Err(Stop)` inside: stopped
    /// while telling the consumer.
    async fn prepare_slot(
        &mut self,
        sql: &tokio_postgres::Client,
    ) -> Result<Result<SlotState, Stop>, ReplicationError> {
        let slot = self.target.slot.clone();
        let state = match sql::slot_state(sql, &slot).await? {
            Some(state) => state,
            None => {
                if self.had_slot {
                    tracing::error!(
                        error_code = %ErrorCode::ReplicationError,
                        %slot,
                        db = %self.target.dbname,
                        "the replication slot disappeared; changes since the last confirmed position are lost"
                    );
                    if self
                        .emit(StreamEvent::Lost {
                            reason: LossReason::SlotDropped,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(Err(Stop));
                    }
                }
                self.create_slot(sql).await?
            }
        };
        if let Some(pid) = state.active_pid {
            return Err(ReplicationError::SlotBeingUsed {
                slot: slot.to_string(),
                pid: Some(pid),
            });
        }
        let loss = match state.retained_bytes {
            None => Some(LossReason::SlotInvalidated),
            Some(retained) if retained > self.config.max_lag_bytes => {
                self.stats.lag_exceeded.fetch_add(1, Ordering::Relaxed);
                Some(LossReason::LagExceeded {
                    retained_bytes: retained,
                    max_bytes: self.config.max_lag_bytes,
                })
            }
            Some(_) => None,
        };
        let state = match loss {
            None => state,
            Some(reason) => {
                let code = match reason {
                    LossReason::LagExceeded { .. } => ErrorCode::ReplicationSlotLagExceeded,
                    _ => ErrorCode::ReplicationError,
                };
                tracing::error!(
                    error_code = %code,
                    %slot,
                    db = %self.target.dbname,
                    %reason,
                    "dropping and recreating the replication slot; changes not yet streamed are lost"
                );
                if sql::drop_slot(sql, &slot).await? {
                    self.stats.count_dropped();
                }
                let state = self.create_slot(sql).await?;
                if self.emit(StreamEvent::Lost { reason }).await.is_err() {
                    return Ok(Err(Stop));
                }
                state
            }
        };
        self.had_slot = true;
        Ok(Ok(state))
    }

    /// Creates the slot (another stream may win the race: then its slot is used).
    async fn create_slot(
        &mut self,
        sql: &tokio_postgres::Client,
    ) -> Result<SlotState, ReplicationError> {
        let slot = &self.target.slot;
        if sql::create_slot(sql, slot).await? {
            self.stats.slots_created.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%slot, db = %self.target.dbname, "replication slot created");
        }
        sql::slot_state(sql, slot)
            .await?
            .ok_or_else(|| ReplicationError::Sql {
                message: format!("replication slot `{slot}` vanished right after its creation"),
            })
    }

    fn stream_error(&self, e: PgWireError) -> ReplicationError {
        match e {
            PgWireError::Server(message)
                if message.contains("SQLSTATE 55006") || message.contains("SQLSTATE 42710") =>
            {
                ReplicationError::SlotBeingUsed {
                    slot: self.target.slot.to_string(),
                    pid: None,
                }
            }
            PgWireError::Auth(message) => ReplicationError::Connect { message },
            other => ReplicationError::Stream {
                message: other.to_string(),
            },
        }
    }

    /// Streams until stopped, until the slot needs attention, or until an error.
    async fn stream(
        &mut self,
        sql: &tokio_postgres::Client,
        repl: &mut ReplicationClient,
        start: Lsn,
    ) -> Result<Outcome, ReplicationError> {
        let period = self.config.lag_check_interval;
        let mut lag_check = tokio::time::interval_at(Instant::now() + period, period);
        lag_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending = Some(StreamEvent::Connected { start_lsn: start });
        let stop = self.shared.stop.clone();
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.finish(sql, repl).await;
                    return Ok(Outcome::Stopped);
                }
                changed = self.confirmed_rx.changed() => {
                    if changed.is_ok() {
                        self.advance(repl);
                    }
                }
                // A temporary slot holds WAL only while this session lives and is confirmed
                // as fast as the consumer goes: no lag bound to enforce.
                _ = lag_check.tick(), if !self.target.temporary_slot => {
                    let over = match sql::slot_state(sql, &self.target.slot).await? {
                        None => true,
                        Some(state) => state
                            .retained_bytes
                            .is_none_or(|retained| retained > self.config.max_lag_bytes),
                    };
                    if over {
                        self.finish(sql, repl).await;
                        self.in_txn = false;
                        return Ok(Outcome::Reconnect);
                    }
                }
                permit = events.reserve(), if pending.is_some() => {
                    let (Ok(permit), Some(event)) = (permit, pending.take()) else {
                        // The consumer is gone: nothing more to hand out.
                        self.finish(sql, repl).await;
                        return Ok(Outcome::Stopped);
                    };
                    match &event {
                        StreamEvent::Begin { .. } => self.in_txn = true,
                        StreamEvent::Commit { end_lsn, .. } => {
                            self.in_txn = false;
                            self.last_commit_end = self.last_commit_end.max(*end_lsn);
                        }
                        _ => {}
                    }
                    permit.send(event);
                }
                received = repl.recv(), if pending.is_none() => {
                    match received {
                        Ok(Some(event)) => pending = self.translate(event, repl),
                        Ok(None) => {
                            return Err(ReplicationError::Stream {
                                message: "the server ended the replication stream".into(),
                            });
                        }
                        Err(e) => return Err(self.stream_error(e)),
                    }
                }
            }
        }
    }

    /// Turns a client event into a stream event; keepalives may move the reported position.
    fn translate(
        &mut self,
        event: ReplicationEvent,
        repl: &ReplicationClient,
    ) -> Option<StreamEvent> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => Some(StreamEvent::Begin {
                final_lsn,
                xid,
                commit_ts: pg_time(commit_time_micros),
            }),
            ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                self.shared
                    .server_end
                    .fetch_max(wal_end.0, Ordering::Relaxed);
                Some(StreamEvent::Data {
                    lsn: wal_start,
                    bytes: data,
                })
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => Some(StreamEvent::Commit {
                lsn,
                end_lsn,
                commit_ts: pg_time(commit_time_micros),
            }),
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Some(StreamEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            }),
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.shared
                    .server_end
                    .fetch_max(wal_end.0, Ordering::Relaxed);
                // Between transactions, with every handed-out commit confirmed, nothing
                // downstream waits for WAL before the server's position: report it, so a
                // tenant whose writes are all outside the publication does not pin WAL.
                let caught_up = *self.confirmed_rx.borrow() >= self.last_commit_end;
                if !self.in_txn && caught_up && wal_end > self.reportable {
                    self.reportable = wal_end;
                    self.shared.reported.store(wal_end.0, Ordering::Relaxed);
                    repl.update_applied_lsn(wal_end);
                }
                None
            }
            ReplicationEvent::StoppedAt { .. } => None,
        }
    }

    /// Reports the consumer's confirmed position, never beyond the last commit handed out.
    fn advance(&mut self, repl: &ReplicationClient) {
        let confirmed = *self.confirmed_rx.borrow_and_update();
        let position = confirmed.min(self.last_commit_end);
        if position > self.reportable {
            self.reportable = position;
            self.shared.reported.store(position.0, Ordering::Relaxed);
            repl.update_applied_lsn(position);
        }
    }

    /// Sends a final status update with the confirmed position, closes the stream and waits
    /// for Postgres to release the slot. If the update could not be sent in time, the released
    /// slot is advanced over SQL instead.
    async fn finish(&mut self, sql: &tokio_postgres::Client, repl: &mut ReplicationClient) {
        self.advance(repl);
        repl.update_applied_lsn(self.reportable);
        let deadline = Instant::now() + self.config.status_interval * 2 + Duration::from_secs(1);
        let metrics = repl.metrics();
        while metrics.last_applied_lsn() < self.reportable && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = metrics.last_applied_lsn() >= self.reportable;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, repl.shutdown()).await;
        // The walsender ends a moment after the connection closed; wait for it, so that the
        // next stream on this slot (a restart, the next owner) does not find it busy.
        let slot = &self.target.slot;
        let released = sql::wait_inactive(sql, slot, RELEASE_WAIT).await;
        if !sent && !self.target.temporary_slot {
            let advanced = match released {
                Ok(()) => sql::advance_slot(sql, slot, self.reportable).await,
                Err(e) => Err(e),
            };
            if let Err(error) = advanced {
                tracing::warn!(
                    error_code = %error.code(),
                    %slot,
                    position = %self.reportable,
                    %error,
                    "the final confirmed position could not be reported; it will be re-sent"
                );
            }
        }
    }
}
