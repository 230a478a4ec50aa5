//! One socket's channels: the join pipeline, pushes, refreshes, expiry and shutdowns.
//!
//! A join runs in two halves (PROTOCOL.md 3.2). Its *preparation* is a future that owns its
//! inputs and does every wait (today the tenant reload; the tenant database, RLS checks and
//! Postgres Changes subscriptions attach here), deciding admission with the pure
//! [`admission`](super::admission) checks. Its *completion* runs on the socket loop: it
//! applies the decision, subscribes in the hub and writes the replies. A preparation that does
//! not finish at once (a tenant cache miss) is polled by the socket task beside client frames,
//! the outbox and timers: heartbeats and fan-out keep flowing. One join is prepared at a time;
//! client frames that depend on it (another join, anything on its topic or behind a held
//! frame of the same topic) wait in order behind it. Dropping the session drops it: nothing
//! is spawned.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::admission::{self, Admitted, Now, SocketFacts};
use super::delayed::DelayedReplies;
use super::error::{JoinError, ShutdownReason};
use super::join::{JoinConfig, join_reply_response};
use crate::auth::{Claims, TenantKeys, TokenError, verify_client_token};
use crate::authorization::{
    Authorization, AuthorizationError, CheckOutcome, CheckRequest, Extension, Permissions, Subject,
};
use crate::broadcast::{Broadcaster, Origin};
use crate::close_code::CloseCode;
use crate::db_broadcast::{DbBroadcast, DbMessage};
use crate::error::{ErrorCode, OperationalError};
use crate::hub::{ChannelSlot, FanoutMessage, Frame, Hub, Outbox, Reads, RoomKey, Subscriber};
use crate::limits::{ConnectedUser, FixedWindow, LimitExceeded, Limits, TenantLimiter};
use crate::phoenix::{self, Inbound, InboundPayload, Vsn};
use crate::postgres_changes::service::{
    PostgresChanges, PreparedSubscription, Registration, SUBSCRIBED, SubscribeError, notice_frame,
};
use crate::presence::Presence;
use crate::tenants::{Tenant, Tenants};
use crate::types::{ConnId, TenantId};

/// Least time between two checks of the tenant's events limit by one socket.
const EVENTS_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Most client frames kept waiting behind a pending join; while this many wait, the socket
/// reads no further frames (TCP back-pressure) until the join completes.
const MAX_HELD_FRAMES: usize = 64;
/// Most join refusals waiting out `CHANNEL_ERROR_BACKOFF_MS` on one socket. Above the default
/// `max_channels_per_client` (100), so a client whose every channel is refused at once gets
/// every reply; past it, refused joins get no reply (the client's join times out and it
/// retries with its backoff).
pub(super) const MAX_DELAYED_REPLIES: usize = 256;

/// Services every session shares.
pub struct ChannelContext {
    /// Tenant records.
    pub tenants: Tenants,
    /// This node's rooms.
    pub hub: Arc<Hub>,
    /// The publish seam.
    pub broadcaster: Arc<Broadcaster>,
    /// The presence tracker.
    pub presence: Arc<Presence>,
    /// Delay before a join error reply (`CHANNEL_ERROR_BACKOFF_MS`).
    pub join_error_backoff: Duration,
    /// `JWT_CLAIM_VALIDATORS`.
    pub claim_validators: Map<String, Value>,
    /// Tokens verified before: a socket opened with a known token skips the signature check.
    pub tokens: Arc<crate::auth::VerifiedTokens>,
    /// Set while the node drains: new joins are refused with `RealtimeRestarting`.
    pub draining: Arc<AtomicBool>,
    /// Postgres Changes subscriptions and streams.
    pub changes: PostgresChanges,
    /// Realtime Authorization: the RLS checks of private channels.
    pub authorization: Authorization,
    /// Broadcast from the database: the replay of stored messages at join.
    pub db_broadcast: DbBroadcast,
}

/// What the socket task should do after a session call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionControl {
    /// Keep going.
    Continue,
    /// Close the socket with this code and reason.
    Close {
        /// WebSocket close code.
        code: CloseCode,
        /// Reason text.
        reason: &'static str,
    },
}

/// What the handshake established about a socket.
pub struct AdmittedSocket {
    /// The tenant the socket belongs to.
    pub tenant: Arc<Tenant>,
    /// The tenant's counters.
    pub limiter: TenantLimiter,
    /// The connection's id.
    pub conn: ConnId,
    /// The socket's wire format.
    pub vsn: Vsn,
    /// The socket's queue.
    pub outbox: Outbox,
    /// The connection JWT.
    pub token: String,
    /// Its verified claims.
    pub claims: Claims,
    /// The upgrade request's `x-*` headers as a JSON object: `request.headers` of the
    /// authorization checks (PROTOCOL.md 8).
    pub headers: Arc<str>,
}

/// Returns the `x-*` headers among `headers` as a JSON object (names lowercase; a repeated
/// header keeps its last value).
pub fn x_headers_json<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let map: Map<String, Value> = headers
        .into_iter()
        .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case("x-"))
        .map(|(name, value)| (name.to_ascii_lowercase(), Value::String(value.to_string())))
        .collect();
    Value::Object(map).to_string()
}

/// One joined channel.
struct Joined {
    join_ref: Option<String>,
    slot: ChannelSlot,
    room: RoomKey,
    token: String,
    claims: Claims,
    expires_at: Instant,
    broadcast_self: bool,
    broadcast_ack: bool,
    delivered_in_batch: bool,
    /// `config.presence.key`, or a UUID generated for this join.
    presence_key: Arc<str>,
    /// The client presence window (PROTOCOL.md 5.4), per channel as in the original.
    presence_window: FixedWindow,
    /// The channel's Postgres Changes subscriptions (removed when the channel is dropped).
    changes: Option<Registration>,
    /// What the channel may do: [`Permissions::PUBLIC`] on a public channel; on a private one,
    /// the reads checked at join (or the last refresh) and the writes checked at first use.
    permissions: Permissions,
    /// Presence was enabled at join (config or tenant flag): its read is checked.
    presence_enabled: bool,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn expiry_instant(exp: i64, now: i64) -> Instant {
    Instant::now() + Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
}

/// A `phx_join` as received: where to reply, and what it asked for.
struct JoinRequest {
    topic: String,
    sub_topic: String,
    join_ref: Option<String>,
    reference: Option<String>,
    config: JoinConfig,
}

/// What a join's preparation owns: shared services and a snapshot of the socket's facts.
struct PrepareInput {
    ctx: Arc<ChannelContext>,
    tenant_id: TenantId,
    limiter: TenantLimiter,
    conn_token: Arc<str>,
    conn_claims: Arc<Claims>,
    joined_channels: usize,
    user_counted: bool,
    headers: Arc<str>,
}

/// A join whose preparation is done: the request, the reloaded tenant record (when found) and
/// the admission decision. Applied by [`Session::complete_join`].
pub struct PreparedJoin {
    request: JoinRequest,
    tenant: Option<Arc<Tenant>>,
    decision: Result<Admitted, JoinError>,
    /// The channel's Postgres Changes, prepared (when it asked for any and was admitted).
    changes: Option<Result<PreparedSubscription, SubscribeError>>,
    /// The read permissions of a private channel ([`Permissions::PUBLIC`] otherwise).
    permissions: Permissions,
    /// The stored messages to replay after the join reply, oldest first (PROTOCOL.md 4.6).
    replay: Vec<DbMessage>,
}

/// A push of a private channel whose write permission was not known yet, with the check's
/// answer: applied by [`Session::complete`], then the push is handled.
struct CheckedPush {
    slot: ChannelSlot,
    write: Extension,
    msg: Inbound,
    outcome: Result<CheckOutcome, AuthorizationError>,
}

/// A verified refreshed token of a private channel, with its read check.
struct RefreshedToken {
    topic: String,
    slot: ChannelSlot,
    token: String,
    claims: Claims,
    outcome: Result<CheckOutcome, AuthorizationError>,
}

enum Step {
    /// Boxed: a prepared join is several times larger than the other steps.
    Join(Box<PreparedJoin>),
    Push(CheckedPush),
    Refresh(RefreshedToken),
}

/// A pending step whose waits are done: a join, or a permission check of a private channel
/// (first broadcast or track, token refresh). Applied by [`Session::complete`].
pub struct Prepared(Step);

type Preparation = Pin<Box<dyn Future<Output = Step> + Send>>;

/// The step being prepared, and its topic (frames on it wait).
struct Pending {
    topic: String,
    preparation: Preparation,
}

/// True when `msg` must not overtake a join pending on `pending_topic`: another join, a frame
/// on the pending topic, or a frame on the topic of a frame already waiting (`held`).
fn waits_behind(pending_topic: &str, held: &VecDeque<Inbound>, msg: &Inbound) -> bool {
    msg.event == phoenix::EVENT_JOIN
        || msg.topic == pending_topic
        || held.iter().any(|waiting| waiting.topic == msg.topic)
}

/// Whether a `presence` push is a `track` (its `event`, in any case).
fn is_track(payload: &InboundPayload) -> bool {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow, default)]
        event: Option<std::borrow::Cow<'a, str>>,
    }
    match payload {
        InboundPayload::Json(raw) => serde_json::from_str::<Shape<'_>>(raw.get())
            .ok()
            .and_then(|shape| shape.event)
            .is_some_and(|event| event.eq_ignore_ascii_case("track")),
        InboundPayload::UserBroadcast(_) => false,
    }
}

/// Every wait of a join, then the admission decision (PROTOCOL.md 3.2 steps before the
/// subscription). Owns its inputs, so the socket loop can poll it beside everything else.
async fn prepare(input: PrepareInput, request: JoinRequest) -> PreparedJoin {
    let refused = |request, err| PreparedJoin {
        request,
        tenant: None,
        decision: Err(err),
        changes: None,
        permissions: Permissions::PUBLIC,
        replay: Vec::new(),
    };
    let draining = input.ctx.draining.load(Ordering::Relaxed);
    if let Err(err) = admission::check_before_lookup(&request.sub_topic, draining) {
        return refused(request, err);
    }
    let tenant = match input.ctx.tenants.get(&input.tenant_id).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return refused(request, JoinError::TenantNotFound),
        Err(err) => {
            tracing::error!(error_code = %err.code(), error = %err, tenant = %input.tenant_id,
                "tenant lookup failed at join");
            return refused(request, JoinError::TenantUnavailable);
        }
    };
    let decision = admission::decide(
        &tenant,
        &request.config,
        SocketFacts {
            conn_token: &input.conn_token,
            conn_claims: &input.conn_claims,
            joined_channels: input.joined_channels,
            user_counted: input.user_counted,
        },
        &input.limiter,
        &input.ctx.claim_validators,
        Now {
            unix: unix_now(),
            instant: std::time::Instant::now(),
        },
    );
    // A private channel's read check (PROTOCOL.md 8): broadcast, and presence when enabled.
    let mut permissions = Permissions::PUBLIC;
    let decision = match decision {
        Ok(admitted) if request.config.private => {
            let presence = request.config.presence_enabled || tenant.presence_enabled;
            let check = CheckRequest {
                subject: Subject::new(&admitted.claims, &request.sub_topic, &input.headers),
                read: Permissions::reads_to_check(presence),
                write: None,
            };
            let unauthorized = || JoinError::Unauthorized {
                sub_topic: request.sub_topic.clone(),
            };
            match input.ctx.authorization.check(&tenant, check).await {
                Ok(outcome) => {
                    permissions = Permissions::from_reads(&outcome);
                    if permissions.may_join() {
                        Ok(admitted)
                    } else {
                        Err(unauthorized())
                    }
                }
                Err(err) if err.is_refusal() => {
                    tracing::info!(error_code = %err.code(), tenant = %tenant.external_id,
                        topic = %request.topic, error = %err, "read policy check failed");
                    Err(unauthorized())
                }
                Err(err) => {
                    tracing::warn!(error_code = %err.code(), tenant = %tenant.external_id,
                        topic = %request.topic, error = %err, "read check could not run at join");
                    Err(JoinError::Authorization(err))
                }
            }
        }
        other => other,
    };
    // Replay (PROTOCOL.md 4.6): private channels only (admission), with broadcast read.
    let mut replay = Vec::new();
    let decision = match (decision, &request.config.replay) {
        (Ok(admitted), Some(Ok(wanted))) => {
            if permissions.broadcast_read != Some(true) {
                Err(JoinError::Unauthorized {
                    sub_topic: request.sub_topic.clone(),
                })
            } else {
                match input
                    .ctx
                    .db_broadcast
                    .replay(&tenant, &request.sub_topic, wanted.since, wanted.limit)
                    .await
                {
                    Ok(rows) => {
                        replay = rows;
                        Ok(admitted)
                    }
                    Err(err) => {
                        tracing::warn!(error_code = %err.code(), tenant = %tenant.external_id,
                            topic = %request.topic, error = %err, "replay query failed");
                        Err(JoinError::ReplayFailed(err.to_string()))
                    }
                }
            }
        }
        (other, _) => other,
    };
    // The subscription's waits (tenant database, catalog, stream start) happen here too, so
    // the join reply is sent only once every change committed after it will be delivered.
    let changes = match &decision {
        Ok(admitted) if !request.config.postgres_changes.is_empty() => Some(
            input
                .ctx
                .changes
                .prepare(
                    &tenant,
                    &request.config.postgres_changes,
                    &admitted.claims.role,
                    &admitted.claims.all,
                )
                .await,
        ),
        _ => None,
    };
    PreparedJoin {
        request,
        tenant: Some(tenant),
        decision,
        changes,
        permissions,
        replay,
    }
}

/// The channels of one socket.
pub struct Session {
    ctx: Arc<ChannelContext>,
    tenant: Arc<Tenant>,
    limiter: TenantLimiter,
    /// Set at the first successful join: the socket counts toward `max_concurrent_users`.
    user: Option<ConnectedUser>,
    conn: ConnId,
    vsn: Vsn,
    outbox: Outbox,
    conn_token: Arc<str>,
    conn_claims: Arc<Claims>,
    /// The upgrade's `x-*` headers (JSON), for authorization checks.
    headers: Arc<str>,
    channels: HashMap<String, Joined>,
    topics_by_slot: HashMap<ChannelSlot, String>,
    next_slot: ChannelSlot,
    /// Some channel received fan-out since the last events-limit check.
    fanout_pending: bool,
    /// When the events limit was last checked.
    events_checked_at: Option<std::time::Instant>,
    /// The step being prepared (a join, a permission check), if it could not finish at once.
    pending: Option<Pending>,
    /// Client frames waiting behind `pending`, in arrival order (empty when none is).
    held: VecDeque<Inbound>,
    /// Join refusals waiting out `CHANNEL_ERROR_BACKOFF_MS`.
    delayed: DelayedReplies,
}

impl Session {
    /// Creates the session of a socket the handshake admitted.
    pub fn new(ctx: Arc<ChannelContext>, socket: AdmittedSocket) -> Session {
        Session {
            ctx,
            tenant: socket.tenant,
            limiter: socket.limiter,
            user: None,
            conn: socket.conn,
            vsn: socket.vsn,
            outbox: socket.outbox,
            conn_token: socket.token.into(),
            conn_claims: Arc::new(socket.claims),
            headers: socket.headers,
            channels: HashMap::new(),
            topics_by_slot: HashMap::new(),
            next_slot: 1,
            fanout_pending: false,
            events_checked_at: None,
            pending: None,
            held: VecDeque::new(),
            delayed: DelayedReplies::new(MAX_DELAYED_REPLIES),
        }
    }

    /// Returns the number of joined channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn reply(
        &self,
        out: &mut Vec<Frame>,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        status: &str,
        response: &str,
    ) {
        out.push(Frame::text(phoenix::encode_reply(
            self.vsn, join_ref, reference, topic, status, response,
        )));
    }

    fn push(
        &self,
        out: &mut Vec<Frame>,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: &str,
    ) {
        out.push(Frame::text(phoenix::encode_message(
            self.vsn, join_ref, reference, topic, event, payload,
        )));
    }

    /// Handles one decoded client frame, appending the frames to write now to `out`.
    ///
    /// Heartbeats are answered at once. While a join is being prepared, frames that depend on
    /// it wait (see [`Session::complete_join`]).
    pub fn handle(&mut self, msg: Inbound, out: &mut Vec<Frame>) -> SessionControl {
        if msg.topic == phoenix::TOPIC_PHOENIX {
            if msg.event == phoenix::EVENT_HEARTBEAT {
                self.reply(
                    out,
                    None,
                    msg.reference.as_deref(),
                    &msg.topic,
                    phoenix::STATUS_OK,
                    phoenix::EMPTY_OBJECT,
                );
            }
            return SessionControl::Continue;
        }
        if self.must_wait(&msg) {
            self.held.push_back(msg);
            return SessionControl::Continue;
        }
        self.dispatch(msg, out)
    }

    fn must_wait(&self, msg: &Inbound) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|pending| waits_behind(&pending.topic, &self.held, msg))
    }

    /// Returns false while [`MAX_HELD_FRAMES`] frames wait behind a pending step: the socket
    /// should read no more frames until [`Session::complete`].
    pub fn reads_frames(&self) -> bool {
        self.held.len() < MAX_HELD_FRAMES
    }

    /// Returns true while a step (a join, a permission check) is being prepared.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits for the pending step's preparation (forever when there is none). Cancel-safe:
    /// the preparation stays in the session until it finishes.
    pub async fn prepared(&mut self) -> Prepared {
        match self.pending.as_mut() {
            Some(pending) => Prepared(pending.preparation.as_mut().await),
            None => std::future::pending().await,
        }
    }

    /// Completes a prepared step, then handles the frames that waited behind it, in order,
    /// until one of them starts another step that must wait.
    pub fn complete(&mut self, prepared: Prepared, out: &mut Vec<Frame>) -> SessionControl {
        self.pending = None;
        match prepared.0 {
            Step::Join(join) => self.apply_join(*join, out),
            Step::Push(push) => self.apply_checked_push(push, out),
            Step::Refresh(refresh) => self.apply_refresh(refresh, out),
        }
        let mut control = SessionControl::Continue;
        while control == SessionControl::Continue && self.pending.is_none() {
            let Some(msg) = self.held.pop_front() else {
                break;
            };
            control = self.dispatch(msg, out);
        }
        control
    }

    fn dispatch(&mut self, msg: Inbound, out: &mut Vec<Frame>) -> SessionControl {
        match msg.event.as_str() {
            phoenix::EVENT_JOIN => self.start_join(msg, out),
            phoenix::EVENT_LEAVE => self.leave(msg, out),
            _ if self.channels.contains_key(&msg.topic) => self.channel_push(msg, out),
            _ => self.reply(
                out,
                None,
                msg.reference.as_deref(),
                &msg.topic,
                phoenix::STATUS_ERROR,
                phoenix::UNMATCHED_TOPIC_RESPONSE,
            ),
        }
        SessionControl::Continue
    }

    /// Starts a join: counts it, replaces a joined channel of the same topic, and prepares it;
    /// completes it in this turn when the preparation need not wait.
    fn start_join(&mut self, msg: Inbound, out: &mut Vec<Frame>) {
        let Some(sub_topic) = msg
            .topic
            .strip_prefix(phoenix::TOPIC_PREFIX)
            .map(str::to_string)
        else {
            self.reply(
                out,
                None,
                msg.reference.as_deref(),
                &msg.topic,
                phoenix::STATUS_ERROR,
                phoenix::UNMATCHED_TOPIC_RESPONSE,
            );
            return;
        };
        // Every channel join counts toward the joins rate when it arrives, refused or not (a
        // loop of bare `realtime:` joins included).
        self.limiter.count_join(std::time::Instant::now());
        let payload = match &msg.payload {
            InboundPayload::Json(raw) => raw.get(),
            InboundPayload::UserBroadcast(_) => phoenix::EMPTY_OBJECT,
        };
        let config = JoinConfig::parse(payload);
        if !config.invalid.is_empty() {
            tracing::warn!(error_code = %ErrorCode::InvalidJoinPayload, tenant = %self.tenant.external_id,
                topic = %msg.topic, fields = ?config.invalid, "join payload has values of the wrong type");
        }
        // Joining a topic that is already joined replaces the old channel.
        if let Some(old) = self.channels.remove(&msg.topic) {
            self.drop_channel(&old);
            self.push(
                out,
                old.join_ref.as_deref(),
                old.join_ref.as_deref(),
                &msg.topic,
                phoenix::EVENT_CLOSE,
                phoenix::EMPTY_OBJECT,
            );
        }
        let input = PrepareInput {
            ctx: self.ctx.clone(),
            tenant_id: self.tenant.external_id.clone(),
            limiter: self.limiter.clone(),
            conn_token: self.conn_token.clone(),
            conn_claims: self.conn_claims.clone(),
            joined_channels: self.channels.len(),
            user_counted: self.user.is_some(),
            headers: self.headers.clone(),
        };
        let topic = msg.topic.clone();
        let request = JoinRequest {
            topic: msg.topic,
            sub_topic,
            join_ref: msg.join_ref,
            reference: msg.reference,
            config,
        };
        // Boxed: large and short-lived; the socket task's own state stays small.
        let mut preparation: Preparation =
            Box::pin(prepare(input, request).map(|join| Step::Join(Box::new(join))));
        // A cached tenant needs no wait: finish in this turn, as the reply is ready now.
        match (&mut preparation).now_or_never() {
            Some(Step::Join(prepared)) => self.apply_join(*prepared, out),
            Some(_) => unreachable!("a join's preparation ends in a join"),
            None => {
                self.pending = Some(Pending { topic, preparation });
            }
        }
    }

    /// Starts a permission check of a private channel beside the loop; frames on `topic` wait
    /// behind it. The caller made sure no other step is pending.
    fn start_check(&mut self, topic: String, preparation: Preparation) {
        debug_assert!(self.pending.is_none());
        self.pending = Some(Pending { topic, preparation });
    }

    /// The check of a channel's first broadcast (`Extension::Broadcast`) or track
    /// (`Extension::Presence`, with the presence read when it was not checked at join).
    fn check_write(&mut self, msg: Inbound, write: Extension) {
        let Some(channel) = self.channels.get(&msg.topic) else {
            return;
        };
        let read = match write {
            Extension::Presence if channel.permissions.presence_read.is_none() => {
                vec![Extension::Presence]
            }
            _ => Vec::new(),
        };
        let request = CheckRequest {
            subject: Subject::new(&channel.claims, &channel.room.sub_topic, &self.headers),
            read,
            write: Some(write),
        };
        let (ctx, tenant, slot) = (self.ctx.clone(), self.tenant.clone(), channel.slot);
        let topic = msg.topic.clone();
        self.start_check(
            topic,
            Box::pin(async move {
                let outcome = ctx.authorization.check(&tenant, request).await;
                Step::Push(CheckedPush {
                    slot,
                    write,
                    msg,
                    outcome,
                })
            }),
        );
    }

    /// Applies a write check's answer to its channel (if it is still the same), then handles
    /// the push that waited for it. A check that failed is not cached: the push is refused
    /// (broadcast dropped, track answered `error`) and the next one checks again.
    fn apply_checked_push(&mut self, push: CheckedPush, out: &mut Vec<Frame>) {
        let CheckedPush {
            slot,
            write,
            msg,
            outcome,
        } = push;
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            return;
        };
        if channel.slot != slot {
            return;
        }
        match outcome {
            Ok(outcome) => {
                let reads_before = channel.permissions.reads();
                channel.permissions.merge(&outcome, Some(write));
                let reads = channel.permissions.reads();
                if reads != reads_before {
                    self.ctx
                        .hub
                        .set_reads(&channel.room, self.conn, channel.slot, reads);
                }
                self.channel_push(msg, out);
            }
            Err(err) => {
                tracing::warn!(error_code = %err.code(), tenant = %self.tenant.external_id,
                    topic = %msg.topic, extension = write.as_str(), error = %err,
                    "write policy check failed; push refused");
                if write == Extension::Presence {
                    let join_ref = channel.join_ref.clone();
                    self.reply(
                        out,
                        join_ref.as_deref(),
                        msg.reference.as_deref(),
                        &msg.topic,
                        phoenix::STATUS_ERROR,
                        phoenix::EMPTY_OBJECT,
                    );
                }
            }
        }
    }

    /// Applies a refreshed token's read check: the channel closes when a granted read is now
    /// refused (or the check could not run); otherwise it takes the token, the claims and the
    /// new reads, and its writes are checked again at next use.
    fn apply_refresh(&mut self, refresh: RefreshedToken, out: &mut Vec<Frame>) {
        let RefreshedToken {
            topic,
            slot,
            token,
            claims,
            outcome,
        } = refresh;
        let Some(channel) = self.channels.get(&topic) else {
            return;
        };
        if channel.slot != slot {
            return;
        }
        let next = match outcome {
            Ok(outcome) => Permissions::from_reads(&outcome),
            Err(err) if err.is_refusal() => {
                tracing::info!(error_code = %err.code(), tenant = %self.tenant.external_id,
                    topic = %topic, error = %err, "read policy check failed after a token refresh");
                Permissions::from_reads(&CheckOutcome {
                    broadcast_read: Some(false),
                    presence_read: channel.permissions.presence_read.map(|_| false),
                    write: None,
                })
            }
            Err(err) => {
                self.shutdown(&topic, &ShutdownReason::Authorization(err), out);
                return;
            }
        };
        if channel.permissions.loses_read(&next) || !next.may_join() {
            let sub_topic = channel.room.sub_topic.to_string();
            self.shutdown(&topic, &ShutdownReason::ReadRevoked { sub_topic }, out);
            return;
        }
        self.apply_token(&topic, token, claims);
        if let Some(channel) = self.channels.get_mut(&topic) {
            channel.permissions = next;
            self.ctx
                .hub
                .set_reads(&channel.room, self.conn, channel.slot, next.reads());
        }
    }

    /// Applies a join's decision: subscribe and reply, or queue the delayed refusal.
    fn apply_join(&mut self, prepared: PreparedJoin, out: &mut Vec<Frame>) {
        let PreparedJoin {
            request,
            tenant,
            decision,
            changes,
            permissions,
            replay,
        } = prepared;
        if let Some(tenant) = tenant {
            self.tenant = tenant;
        }
        // The user is counted last, once every check passed (PROTOCOL.md 3.2).
        let decision = decision.and_then(|admitted| {
            if self.user.is_none() {
                let user = self
                    .limiter
                    .admit_user(&self.tenant.limits)
                    .map_err(JoinError::Limit)?;
                self.user = Some(user);
            }
            Ok(admitted)
        });
        match decision {
            Ok(admitted) => self.subscribe(request, admitted, changes, permissions, replay, out),
            Err(err) => self.refuse(&request, &err),
        }
    }

    fn subscribe(
        &mut self,
        request: JoinRequest,
        admitted: Admitted,
        changes: Option<Result<PreparedSubscription, SubscribeError>>,
        permissions: Permissions,
        replay: Vec<DbMessage>,
        out: &mut Vec<Frame>,
    ) {
        let JoinRequest {
            topic,
            sub_topic,
            join_ref,
            reference,
            config,
        } = request;
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1).max(1);
        let room = RoomKey {
            tenant: self.tenant.external_id.clone(),
            private: config.private,
            sub_topic: sub_topic.into(),
        };
        self.ctx.hub.subscribe(
            room.clone(),
            Subscriber {
                conn: self.conn,
                slot,
                vsn: self.vsn,
                outbox: self.outbox.clone(),
                reads: if config.private {
                    permissions.reads()
                } else {
                    Reads::ALL
                },
                replayed: (!replay.is_empty())
                    .then(|| Arc::new(replay.iter().map(|m| m.id.clone()).collect())),
            },
        );
        let expires_at = expiry_instant(admitted.claims.exp, unix_now());
        self.topics_by_slot.insert(slot, topic.clone());
        let response = join_reply_response(&config.postgres_changes);
        self.reply(
            out,
            join_ref.as_deref(),
            reference.as_deref(),
            &topic,
            phoenix::STATUS_OK,
            &response,
        );
        tracing::debug!(tenant = %self.tenant.external_id, topic = %topic, conn = %self.conn, "channel joined");
        crate::metrics::channel_joined();
        self.push_replay(join_ref.as_deref(), &topic, replay, out);
        let registration = match changes {
            Some(Ok(prepared)) => {
                let (registration, streaming) = prepared.register(
                    self.conn,
                    slot,
                    self.outbox.clone(),
                    self.vsn,
                    &topic,
                    join_ref.as_deref(),
                );
                if streaming {
                    out.push(notice_frame(
                        self.vsn,
                        join_ref.as_deref(),
                        &topic,
                        true,
                        SUBSCRIBED,
                    ));
                }
                Some(registration)
            }
            Some(Err(err)) => {
                tracing::warn!(error_code = %err.code(), tenant = %self.tenant.external_id, topic = %topic,
                    error = %err, "unable to subscribe to Postgres changes");
                out.push(notice_frame(
                    self.vsn,
                    join_ref.as_deref(),
                    &topic,
                    false,
                    &err.client_message(),
                ));
                None
            }
            None => None,
        };
        let presence_key = config
            .presence_key
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let presence_enabled = config.presence_enabled || self.tenant.presence_enabled;
        self.channels.insert(
            topic.clone(),
            Joined {
                join_ref,
                slot,
                room,
                token: admitted.token,
                claims: admitted.claims,
                expires_at,
                broadcast_self: config.broadcast_self,
                broadcast_ack: config.broadcast_ack,
                delivered_in_batch: false,
                presence_key: presence_key.into(),
                presence_window: self.ctx.presence.client_window(&self.tenant.limits),
                changes: registration,
                permissions,
                presence_enabled,
            },
        );
        // A private channel without presence read gets no presence state (PROTOCOL.md 5.2).
        if presence_enabled && permissions.presence_read != Some(false) {
            self.push_presence_state(&topic, out);
        }
    }

    /// The replayed messages, right after the join reply (PROTOCOL.md 4.6, 2.4): a JSON row as
    /// a text `broadcast` with the channel's join_ref, a binary row as kind 4 (v2 only).
    fn push_replay(
        &self,
        join_ref: Option<&str>,
        topic: &str,
        replay: Vec<DbMessage>,
        out: &mut Vec<Frame>,
    ) {
        for message in replay {
            let m = &message.broadcast;
            match (m.encoding, self.vsn) {
                (phoenix::PayloadEncoding::Binary, Vsn::V2) => {
                    if let Ok(bytes) = phoenix::encode_user_broadcast(topic, m) {
                        out.push(Frame::Binary(bytes));
                    }
                }
                (phoenix::PayloadEncoding::Binary, Vsn::V1) => {}
                (phoenix::PayloadEncoding::Json, _) => {
                    if let Some(payload) = phoenix::user_broadcast_json(m) {
                        self.push(
                            out,
                            join_ref,
                            None,
                            topic,
                            phoenix::EVENT_BROADCAST,
                            &payload,
                        );
                    }
                }
            }
        }
    }

    /// Queues a join's error reply for `CHANNEL_ERROR_BACKOFF_MS` (PROTOCOL.md 3.4); the socket
    /// keeps working meanwhile. Past [`MAX_DELAYED_REPLIES`] waiting, the refusal is dropped.
    fn refuse(&mut self, request: &JoinRequest, err: &JoinError) {
        tracing::info!(error_code = %err.code(), tenant = %self.tenant.external_id, topic = %request.topic,
            reason = %err.client_message(), error = %err, "join refused");
        let frame = Frame::text(phoenix::encode_reply(
            self.vsn,
            request.join_ref.as_deref(),
            request.reference.as_deref(),
            &request.topic,
            phoenix::STATUS_ERROR,
            &phoenix::reason_response(&err.client_reason()),
        ));
        let due = Instant::now() + self.ctx.join_error_backoff;
        if let Err(dropped) = self.delayed.push(due, frame, err.closes_socket())
            && dropped.is_power_of_two()
        {
            tracing::warn!(error_code = %err.code(), tenant = %self.tenant.external_id, dropped,
                limit = MAX_DELAYED_REPLIES, "too many join refusals waiting on one socket; refusal dropped without a reply");
        }
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let keys = TenantKeys {
            jwt_secret: self.tenant.jwt_secret.as_ref(),
            jwks: self.tenant.jwt_jwks.as_ref(),
        };
        verify_client_token(token, keys, &self.ctx.claim_validators, unix_now())
    }

    fn leave(&mut self, msg: Inbound, out: &mut Vec<Frame>) {
        match self.channels.remove(&msg.topic) {
            Some(channel) => {
                self.drop_channel(&channel);
                let join_ref = channel.join_ref.as_deref();
                self.reply(
                    out,
                    join_ref,
                    msg.reference.as_deref(),
                    &msg.topic,
                    phoenix::STATUS_OK,
                    phoenix::EMPTY_OBJECT,
                );
                self.push(
                    out,
                    join_ref,
                    join_ref,
                    &msg.topic,
                    phoenix::EVENT_CLOSE,
                    phoenix::EMPTY_OBJECT,
                );
            }
            None => self.reply(
                out,
                msg.join_ref.as_deref(),
                msg.reference.as_deref(),
                &msg.topic,
                phoenix::STATUS_OK,
                phoenix::EMPTY_OBJECT,
            ),
        }
    }

    fn drop_channel(&mut self, channel: &Joined) {
        self.ctx
            .hub
            .unsubscribe(&channel.room, self.conn, channel.slot);
        self.ctx.presence.untrack(self.conn, channel.slot);
        self.topics_by_slot.remove(&channel.slot);
    }

    /// Ends a channel from the server side: `system` error with the reason's client text, then
    /// `phx_close` (PROTOCOL.md 3.3, 3.5).
    fn shutdown(&mut self, topic: &str, reason: &ShutdownReason, out: &mut Vec<Frame>) {
        let Some(channel) = self.channels.remove(topic) else {
            return;
        };
        self.drop_channel(&channel);
        let message = reason.client_message();
        tracing::info!(error_code = %reason.code(), tenant = %self.tenant.external_id, topic,
            reason = %message, "channel shutdown");
        let payload = phoenix::system_error_payload(&message, &channel.room.sub_topic);
        let join_ref = channel.join_ref.as_deref();
        self.push(out, join_ref, None, topic, phoenix::EVENT_SYSTEM, &payload);
        self.push(
            out,
            join_ref,
            join_ref,
            topic,
            phoenix::EVENT_CLOSE,
            phoenix::EMPTY_OBJECT,
        );
    }

    fn channel_push(&mut self, msg: Inbound, out: &mut Vec<Frame>) {
        let now = std::time::Instant::now();
        // A private channel's first broadcast or track waits for its write check, beside the
        // loop (behind any other pending step).
        let write = self.unchecked_write(&msg);
        if self.pending.is_some() && (write.is_some() || self.refreshes_private(&msg)) {
            self.held.push_back(msg);
            return;
        }
        if let Some(write) = write {
            self.check_write(msg, write);
            return;
        }
        match msg.event.as_str() {
            phoenix::EVENT_BROADCAST => self.broadcast_push(msg, out, now),
            phoenix::EVENT_ACCESS_TOKEN => {
                let token = match &msg.payload {
                    InboundPayload::Json(raw) => {
                        serde_json::from_str::<Map<String, Value>>(raw.get())
                            .ok()
                            .and_then(|m| m.get("access_token").cloned())
                    }
                    InboundPayload::UserBroadcast(_) => None,
                };
                match token {
                    Some(Value::String(token)) => self.refresh_token(&msg.topic, token, out),
                    Some(Value::Null) => {}
                    _ => self.limiter.add_channel_events(1, now),
                }
            }
            phoenix::EVENT_PRESENCE => self.presence_push(msg, out, now),
            _ => self.limiter.add_channel_events(1, now),
        }
    }

    /// The write a push needs checked first: a private channel's broadcast or track whose
    /// write permission was not evaluated yet.
    fn unchecked_write(&self, msg: &Inbound) -> Option<Extension> {
        let channel = self.channels.get(&msg.topic)?;
        if !channel.room.private {
            return None;
        }
        match msg.event.as_str() {
            phoenix::EVENT_BROADCAST if channel.permissions.broadcast_write.is_none() => {
                Some(Extension::Broadcast)
            }
            phoenix::EVENT_PRESENCE
                if channel.permissions.presence_write.is_none() && is_track(&msg.payload) =>
            {
                Some(Extension::Presence)
            }
            _ => None,
        }
    }

    /// Whether `msg` is a token refresh of a private channel (it runs a read check).
    fn refreshes_private(&self, msg: &Inbound) -> bool {
        msg.event == phoenix::EVENT_ACCESS_TOKEN
            && self
                .channels
                .get(&msg.topic)
                .is_some_and(|c| c.room.private)
    }

    fn broadcast_push(&mut self, msg: Inbound, out: &mut Vec<Frame>, now: std::time::Instant) {
        let channel = &self.channels[&msg.topic];
        if channel.permissions.broadcast_write == Some(false) {
            // No write permission: dropped without a reply, ack or not (PROTOCOL.md 4.4).
            tracing::debug!(error_code = %ErrorCode::Unauthorized, tenant = %self.tenant.external_id,
                topic = %msg.topic, "broadcast without write permission dropped");
            return;
        }
        let message = match msg.payload {
            InboundPayload::UserBroadcast(mut user) => {
                // Client metadata is decoded but not forwarded, as in the original.
                user.metadata = None;
                FanoutMessage::User(user)
            }
            InboundPayload::Json(raw) => {
                if !raw.get().trim_start().starts_with('{') {
                    tracing::warn!(error_code = %ErrorCode::UnableToHandleBroadcast, tenant = %self.tenant.external_id,
                        topic = %msg.topic, "broadcast payload is not a JSON object; dropped");
                    return;
                }
                FanoutMessage::Json {
                    kind: crate::hub::FanoutKind::Broadcast,
                    event: phoenix::EVENT_BROADCAST.into(),
                    payload: Arc::from(raw.get()),
                }
            }
        };
        let max = self.tenant.limits.max_payload_size_in_kb as usize * 1000;
        if message.payload_len() > max {
            tracing::info!(error_code = %ErrorCode::PayloadSizeExceeded, tenant = %self.tenant.external_id,
                topic = %msg.topic, size = message.payload_len(), "broadcast payload too large");
            if channel.broadcast_ack {
                self.reply(
                    out,
                    channel.join_ref.as_deref(),
                    msg.reference.as_deref(),
                    &msg.topic,
                    phoenix::STATUS_ERROR,
                    phoenix::PAYLOAD_SIZE_EXCEEDED_RESPONSE,
                );
            }
            return;
        }
        let exclude = (!channel.broadcast_self).then_some(Origin {
            conn: self.conn,
            slot: channel.slot,
        });
        let delivered = self
            .ctx
            .broadcaster
            .publish(&channel.room, &message, exclude);
        self.limiter.add_channel_events(1 + delivered as u64, now);
        if channel.broadcast_ack {
            self.reply(
                out,
                channel.join_ref.as_deref(),
                msg.reference.as_deref(),
                &msg.topic,
                phoenix::STATUS_OK,
                phoenix::EMPTY_OBJECT,
            );
        }
    }

    /// Pushes `presence_state` after a join, or shuts the channel down when the tenant's
    /// presence rate is exceeded (PROTOCOL.md 5.2, 5.4).
    fn push_presence_state(&mut self, topic: &str, out: &mut Vec<Frame>) {
        let now = std::time::Instant::now();
        if let Err(err) = self.limiter.check_presence_event(&self.tenant.limits, now) {
            self.shutdown(topic, &ShutdownReason::Limit(err), out);
            return;
        }
        let channel = &self.channels[topic];
        let state = self.ctx.presence.state(&channel.room);
        self.push(
            out,
            channel.join_ref.as_deref(),
            None,
            topic,
            phoenix::EVENT_PRESENCE_STATE,
            &state,
        );
    }

    /// A `presence` push: `track` / `untrack` with the checks of PROTOCOL.md 5.1 and 5.4.
    fn presence_push(&mut self, msg: Inbound, out: &mut Vec<Frame>, now: std::time::Instant) {
        let raw = match &msg.payload {
            InboundPayload::Json(raw) => raw.get(),
            InboundPayload::UserBroadcast(_) => phoenix::EMPTY_OBJECT,
        };
        let payload: Map<String, Value> = serde_json::from_str(raw).unwrap_or_default();
        let topic = msg.topic.as_str();
        let reference = msg.reference.as_deref();
        let Some(channel) = self.channels.get_mut(topic) else {
            return;
        };
        let join_ref = channel.join_ref.clone();
        let Some(event) = payload.get("event") else {
            self.reply(
                out,
                join_ref.as_deref(),
                reference,
                topic,
                phoenix::STATUS_OK,
                phoenix::EMPTY_OBJECT,
            );
            return;
        };
        if let Err(err) = Limits::check_client_presence(&mut channel.presence_window, now) {
            self.shutdown(topic, &ShutdownReason::Limit(err), out);
            return;
        }
        let (room, key, slot) = (
            channel.room.clone(),
            channel.presence_key.clone(),
            channel.slot,
        );
        let presence_write = channel.permissions.presence_write;
        match event.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("track") if presence_write == Some(false) => {
                // No presence write permission on a private channel (PROTOCOL.md 5.1).
                self.reply(
                    out,
                    join_ref.as_deref(),
                    reference,
                    topic,
                    phoenix::STATUS_ERROR,
                    phoenix::EMPTY_OBJECT,
                );
            }
            Some("track") => {
                let meta = match payload.get("payload") {
                    None => Map::new(),
                    Some(Value::Object(meta)) => meta.clone(),
                    Some(_) => {
                        tracing::info!(error_code = %ErrorCode::InvalidPresencePayload, tenant = %self.tenant.external_id,
                            topic, "presence track payload is not a map");
                        self.reply(
                            out,
                            join_ref.as_deref(),
                            reference,
                            topic,
                            phoenix::STATUS_ERROR,
                            &phoenix::reason_response("Presence track payload must be a map"),
                        );
                        return;
                    }
                };
                let max = self.tenant.limits.max_payload_size_in_kb as usize * 1000;
                if raw.len() > max {
                    self.shutdown(topic, &ShutdownReason::TrackTooLarge, out);
                    return;
                }
                if let Err(err) = self.limiter.check_presence_event(&self.tenant.limits, now) {
                    self.shutdown(topic, &ShutdownReason::Limit(err), out);
                    return;
                }
                self.ctx.presence.track(&room, &key, &meta, self.conn, slot);
                self.reply(
                    out,
                    join_ref.as_deref(),
                    reference,
                    topic,
                    phoenix::STATUS_OK,
                    phoenix::EMPTY_OBJECT,
                );
            }
            Some("untrack") => {
                self.ctx.presence.untrack(self.conn, slot);
                self.reply(
                    out,
                    join_ref.as_deref(),
                    reference,
                    topic,
                    phoenix::STATUS_OK,
                    phoenix::EMPTY_OBJECT,
                );
            }
            _ => {
                tracing::info!(error_code = %ErrorCode::UnknownPresenceEvent, tenant = %self.tenant.external_id,
                    topic, event = %event, "unknown presence event");
                self.reply(
                    out,
                    join_ref.as_deref(),
                    reference,
                    topic,
                    phoenix::STATUS_ERROR,
                    phoenix::EMPTY_OBJECT,
                );
            }
        }
    }

    fn refresh_token(&mut self, topic: &str, token: String, out: &mut Vec<Frame>) {
        let channel = &self.channels[topic];
        if token.starts_with("sb_") || token == channel.token {
            return;
        }
        let claims = match self.verify(&token) {
            Ok(claims) => claims,
            Err(err) => {
                self.shutdown(topic, &ShutdownReason::Token(err), out);
                return;
            }
        };
        if !channel.room.private {
            self.apply_token(topic, token, claims);
            return;
        }
        // A private channel checks its reads again with the new claims, beside the loop.
        let read = Permissions::reads_to_check(
            channel.presence_enabled || channel.permissions.presence_read.is_some(),
        );
        let request = CheckRequest {
            subject: Subject::new(&claims, &channel.room.sub_topic, &self.headers),
            read,
            write: None,
        };
        let (ctx, tenant, slot) = (self.ctx.clone(), self.tenant.clone(), channel.slot);
        let topic = topic.to_string();
        self.start_check(
            topic.clone(),
            Box::pin(async move {
                let outcome = ctx.authorization.check(&tenant, request).await;
                Step::Refresh(RefreshedToken {
                    topic,
                    slot,
                    token,
                    claims,
                    outcome,
                })
            }),
        );
    }

    /// Gives a channel its refreshed token: claims, expiry, Postgres Changes claims.
    fn apply_token(&mut self, topic: &str, token: String, claims: Claims) {
        let expires_at = expiry_instant(claims.exp, unix_now());
        if let Some(channel) = self.channels.get_mut(topic) {
            if let Some(changes) = &channel.changes {
                changes.refresh(&claims.role, &claims.all);
            }
            channel.token = token;
            channel.claims = claims;
            channel.expires_at = expires_at;
        }
    }

    /// Writes a fan-out frame for the channel in `slot` (dropped when that channel is gone).
    /// Only broadcast deliveries mark the channel for the events-limit check (PROTOCOL.md 12.2).
    pub fn fanout(
        &mut self,
        slot: ChannelSlot,
        kind: crate::hub::FanoutKind,
        frame: Frame,
        out: &mut Vec<Frame>,
    ) {
        let Some(topic) = self.topics_by_slot.get(&slot) else {
            return;
        };
        if let Some(channel) = self.channels.get_mut(topic) {
            if kind.checks_events_limit() {
                channel.delivered_in_batch = true;
                self.fanout_pending = true;
            }
            out.push(frame);
        }
    }

    /// Checks the tenant's events limit for the channels that received fan-out since the last
    /// check; while it is tripped, those channels shut down.
    ///
    /// The tenant's rolling average only moves at its 5 s ticks, so one check per
    /// [`EVENTS_CHECK_INTERVAL`] sees every trip; the socket does not lock the counter on every
    /// drained batch.
    pub fn after_fanout_batch(&mut self, out: &mut Vec<Frame>) {
        if !self.fanout_pending {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .events_checked_at
            .is_some_and(|at| now.duration_since(at) < EVENTS_CHECK_INTERVAL)
        {
            return;
        }
        self.events_checked_at = Some(now);
        self.fanout_pending = false;
        let tripped = self.limiter.check_channel_events(&self.tenant.limits, now);
        let delivered: Vec<String> = self
            .channels
            .iter_mut()
            .filter_map(|(t, c)| std::mem::take(&mut c.delivered_in_batch).then(|| t.clone()))
            .collect();
        if let Err(err @ LimitExceeded::ChannelEvents { .. }) = tripped {
            let reason = ShutdownReason::Limit(err);
            for topic in delivered {
                self.shutdown(&topic, &reason, out);
            }
        }
    }

    /// Returns the next moment the session has work on the socket's timer: a channel token
    /// expiring, or a delayed join refusal falling due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.channels.values().map(|c| c.expires_at).min();
        match (expiry, self.delayed.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does the session's timed work: writes the join refusals that are due (closing the
    /// socket after one that requires it) and shuts down channels whose token expired.
    pub fn on_timer(&mut self, out: &mut Vec<Frame>) -> SessionControl {
        let now = Instant::now();
        if let Some(code) = self.delayed.write_due(now, out) {
            return SessionControl::Close {
                code,
                reason: "join refused",
            };
        }
        self.expire_tokens(now, out);
        SessionControl::Continue
    }

    /// Shuts down the channels whose token has expired.
    fn expire_tokens(&mut self, now: Instant, out: &mut Vec<Frame>) {
        let unix = unix_now();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires_at <= now)
            .map(|(t, c)| (t.clone(), c.claims.exp))
            .collect();
        for (topic, exp) in expired {
            let reason = ShutdownReason::Token(TokenError::Expired {
                seconds_ago: (unix - exp).max(0),
            });
            self.shutdown(&topic, &reason, out);
        }
    }

    /// Switches to the tenant's new record (limits, presence flag) without a reconnect.
    pub fn tenant_updated(&mut self, tenant: Arc<Tenant>) {
        self.tenant = tenant;
    }

    /// Tells every channel the server requested a disconnect; the socket then closes (1012).
    pub fn tenant_disconnect(&mut self, out: &mut Vec<Frame>) -> SessionControl {
        self.disconnect_all(out, "server requested disconnect")
    }

    /// The node is draining (shutting down): every channel is told as in a tenant-wide
    /// disconnect, and the socket closes with 1012, so the client reconnects (through a load
    /// balancer, to another node) and rejoins.
    pub fn node_draining(&mut self, out: &mut Vec<Frame>) -> SessionControl {
        self.disconnect_all(out, "server shutting down")
    }

    /// The `system` disconnect message to every channel, then close 1012 with `reason`.
    fn disconnect_all(&mut self, out: &mut Vec<Frame>, reason: &'static str) -> SessionControl {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.push(
                out,
                None,
                None,
                &topic,
                phoenix::EVENT_SYSTEM,
                phoenix::SERVER_DISCONNECT_PAYLOAD,
            );
        }
        SessionControl::Close {
            code: CloseCode::ServiceRestart,
            reason,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for channel in self.channels.values() {
            self.ctx
                .hub
                .unsubscribe(&channel.room, self.conn, channel.slot);
        }
        // A socket that ends without leaving takes all its presences with it.
        self.ctx.presence.untrack_all(self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(topic: &str, event: &str) -> Inbound {
        Inbound {
            join_ref: None,
            reference: None,
            topic: topic.into(),
            event: event.into(),
            payload: InboundPayload::Json(
                serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            ),
        }
    }

    #[test]
    fn only_x_headers_reach_the_authorization_context() {
        let json = x_headers_json([
            ("X-Client-Info", "supabase-js/2"),
            ("host", "t.localhost"),
            ("x-", "too short"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"x-client-info": "supabase-js/2", "x-forwarded-for": "10.0.0.1"})
        );
    }

    #[test]
    fn a_track_is_recognised_in_any_case() {
        let payload = |text: &str| {
            InboundPayload::Json(serde_json::value::RawValue::from_string(text.into()).unwrap())
        };
        assert!(is_track(&payload(
            r#"{"type":"presence","event":"TRACK","payload":{}}"#
        )));
        assert!(is_track(&payload(r#"{"event":"track"}"#)));
        assert!(!is_track(&payload(r#"{"event":"untrack"}"#)));
        assert!(!is_track(&payload(r#"{"event":1}"#)));
        assert!(!is_track(&payload(r#"{}"#)));
        assert!(!is_track(&payload(r#"[]"#)));
    }

    #[test]
    fn frames_that_depend_on_a_pending_join_wait_and_others_pass() {
        let mut held = VecDeque::new();
        let pending = "realtime:b";
        // Any other join waits, whatever its topic.
        assert!(waits_behind(
            pending,
            &held,
            &frame("realtime:c", "phx_join")
        ));
        assert!(waits_behind(pending, &held, &frame("other:x", "phx_join")));
        // Frames on the pending topic wait; frames on other channels pass.
        assert!(waits_behind(
            pending,
            &held,
            &frame("realtime:b", "broadcast")
        ));
        assert!(waits_behind(
            pending,
            &held,
            &frame("realtime:b", "phx_leave")
        ));
        assert!(!waits_behind(
            pending,
            &held,
            &frame("realtime:a", "broadcast")
        ));
        assert!(!waits_behind(
            pending,
            &held,
            &frame("realtime:a", "phx_leave")
        ));
        // Once a join of `realtime:c` waits, frames on `realtime:c` wait behind it.
        held.push_back(frame("realtime:c", "phx_join"));
        assert!(waits_behind(
            pending,
            &held,
            &frame("realtime:c", "broadcast")
        ));
        assert!(!waits_behind(
            pending,
            &held,
            &frame("realtime:a", "access_token")
        ));
    }
}
