//! One socket's channels: the join pipeline, pushes, refreshes, expiry and shutdowns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::join::{JoinConfig, join_reply_response};
use crate::auth::{Claims, TenantKeys, TokenError, verify_client_token};
use crate::broadcast::{Broadcaster, Origin};
use crate::error::{ErrorCode, OperationalError};
use crate::hub::{ChannelSlot, FanoutMessage, Frame, Hub, Outbound, Outbox, RoomKey, Subscriber};
use crate::limits::{ConnectedUser, FixedWindow, LimitExceeded, Limits, TenantLimiter};
use crate::phoenix::{self, Inbound, InboundPayload, Vsn};
use crate::presence::Presence;
use crate::tenants::{Tenant, Tenants};
use crate::types::ConnId;

/// WebSocket close code sent after `TenantNotFound` or `ClientJoinRateLimitReached` at join.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Least time between two checks of the tenant's events limit by one socket.
const EVENTS_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// WebSocket close code of a tenant-wide disconnect.
const CLOSE_SERVICE_RESTART: u16 = 1012;

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
    /// Set while the node drains: new joins are refused with `RealtimeRestarting`.
    pub draining: Arc<AtomicBool>,
}

/// What the socket task should do after a session call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionControl {
    /// Keep going.
    Continue,
    /// Close the socket with this code and reason.
    Close {
        /// WebSocket close code.
        code: u16,
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
}

/// A refused join: code, client message, and whether the socket closes after the reply.
struct Refusal {
    code: ErrorCode,
    message: String,
    close: bool,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            close: false,
        }
    }

    fn from_error(err: &impl OperationalError) -> Refusal {
        Refusal::new(err.code(), err.client_message())
    }

    fn reason(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn expiry_instant(exp: i64, now: i64) -> Instant {
    Instant::now() + Duration::from_secs(exp.saturating_sub(now).max(0) as u64)
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
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
    conn_token: String,
    conn_claims: Claims,
    channels: HashMap<String, Joined>,
    topics_by_slot: HashMap<ChannelSlot, String>,
    next_slot: ChannelSlot,
    /// Some channel received fan-out since the last events-limit check.
    fanout_pending: bool,
    /// When the events limit was last checked.
    events_checked_at: Option<std::time::Instant>,
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
            conn_token: socket.token,
            conn_claims: socket.claims,
            channels: HashMap::new(),
            topics_by_slot: HashMap::new(),
            next_slot: 1,
            fanout_pending: false,
            events_checked_at: None,
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
    pub async fn handle(&mut self, msg: Inbound, out: &mut Vec<Frame>) -> SessionControl {
        if msg.topic == phoenix::TOPIC_PHOENIX {
            if msg.event == phoenix::EVENT_HEARTBEAT {
                self.reply(out, None, msg.reference.as_deref(), &msg.topic, "ok", "{}");
            }
            return SessionControl::Continue;
        }
        match msg.event.as_str() {
            // Boxed: the join future (tenant lookup) is large and rare; keeping it out of the
            // socket task's own state keeps idle sockets small.
            phoenix::EVENT_JOIN => Box::pin(self.join(msg, out)).await,
            phoenix::EVENT_LEAVE => {
                self.leave(msg, out);
                SessionControl::Continue
            }
            _ if self.channels.contains_key(&msg.topic) => {
                self.channel_push(msg, out);
                SessionControl::Continue
            }
            _ => {
                self.reply(
                    out,
                    None,
                    msg.reference.as_deref(),
                    &msg.topic,
                    "error",
                    r#"{"reason":"unmatched topic"}"#,
                );
                SessionControl::Continue
            }
        }
    }

    async fn join(&mut self, msg: Inbound, out: &mut Vec<Frame>) -> SessionControl {
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
                "error",
                r#"{"reason":"unmatched topic"}"#,
            );
            return SessionControl::Continue;
        };
        let payload = match &msg.payload {
            InboundPayload::Json(raw) => raw.get(),
            InboundPayload::UserBroadcast(_) => "{}",
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
                "{}",
            );
        }
        match self.admit_join(&sub_topic, &config).await {
            Ok((token, claims)) => {
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
                    },
                );
                let expires_at = expiry_instant(claims.exp, unix_now());
                self.topics_by_slot.insert(slot, msg.topic.clone());
                let response = join_reply_response(&config.postgres_changes);
                self.reply(
                    out,
                    msg.join_ref.as_deref(),
                    msg.reference.as_deref(),
                    &msg.topic,
                    "ok",
                    &response,
                );
                tracing::debug!(tenant = %self.tenant.external_id, topic = %msg.topic, conn = %self.conn, "channel joined");
                let presence_key = config
                    .presence_key
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let presence_enabled = config.presence_enabled || self.tenant.presence_enabled;
                self.channels.insert(
                    msg.topic.clone(),
                    Joined {
                        join_ref: msg.join_ref,
                        slot,
                        room,
                        token,
                        claims,
                        expires_at,
                        broadcast_self: config.broadcast_self,
                        broadcast_ack: config.broadcast_ack,
                        delivered_in_batch: false,
                        presence_key: presence_key.into(),
                        presence_window: self.ctx.presence.client_window(&self.tenant.limits),
                    },
                );
                if presence_enabled {
                    self.push_presence_state(&msg.topic, out);
                }
                SessionControl::Continue
            }
            Err(refusal) => {
                tracing::info!(error_code = %refusal.code, tenant = %self.tenant.external_id, topic = %msg.topic,
                    reason = %refusal.message, "join refused");
                let response = format!("{{\"reason\":{}}}", json_string(&refusal.reason()));
                let frame = Frame::text(phoenix::encode_reply(
                    self.vsn,
                    msg.join_ref.as_deref(),
                    msg.reference.as_deref(),
                    &msg.topic,
                    "error",
                    &response,
                ));
                // The original answers join errors after a deliberate delay; the socket keeps
                // working meanwhile.
                let outbox = self.outbox.clone();
                let delay = self.ctx.join_error_backoff;
                let close = refusal.close;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    outbox.push(Outbound::Direct(frame));
                    if close {
                        outbox.push(Outbound::Close {
                            code: CLOSE_GOING_AWAY,
                            reason: "join refused",
                        });
                    }
                });
                SessionControl::Continue
            }
        }
    }

    /// The join pipeline of PROTOCOL.md 3.2, first failure wins.
    async fn admit_join(
        &mut self,
        sub_topic: &str,
        config: &JoinConfig,
    ) -> Result<(String, Claims), Refusal> {
        if sub_topic.is_empty() {
            return Err(Refusal::new(
                ErrorCode::TopicNameRequired,
                "You must provide a topic name",
            ));
        }
        if self.ctx.draining.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                ErrorCode::RealtimeRestarting,
                "Realtime is restarting, please standby",
            ));
        }
        match self.ctx.tenants.get(&self.tenant.external_id).await {
            Ok(Some(tenant)) => self.tenant = tenant,
            Ok(None) => {
                return Err(Refusal {
                    code: ErrorCode::TenantNotFound,
                    message: "Tenant with the given ID does not exist".into(),
                    close: true,
                });
            }
            Err(err) => {
                tracing::error!(error_code = %err.code(), error = %err, tenant = %self.tenant.external_id, "tenant lookup failed at join");
                return Err(Refusal::new(
                    ErrorCode::UnknownErrorOnChannel,
                    "Unable to load the tenant",
                ));
            }
        }
        let tenant = self.tenant.clone();
        if tenant.suspend {
            return Err(Refusal::new(
                ErrorCode::RealtimeDisabledForTenant,
                "Realtime disabled for this tenant",
            ));
        }
        if tenant.private_only && !config.private {
            return Err(Refusal::new(
                ErrorCode::PrivateOnly,
                "This project only allows private channels",
            ));
        }
        if self.user.is_none()
            && let Err(err) = self.limiter.check_concurrent_users(&tenant.limits)
        {
            return Err(Refusal::from_error(&err));
        }
        if let Err(err) = self
            .limiter
            .check_join(&tenant.limits, std::time::Instant::now())
        {
            return Err(Refusal {
                close: true,
                ..Refusal::from_error(&err)
            });
        }
        if self.channels.len() >= tenant.limits.max_channels_per_client as usize {
            return Err(Refusal::new(
                ErrorCode::ChannelRateLimitReached,
                "Too many channels",
            ));
        }
        let token = match &config.token {
            Some(t) if !t.starts_with("sb_") => t.clone(),
            _ => self.conn_token.clone(),
        };
        let claims = if token == self.conn_token {
            // Verified at the handshake against the same tenant keys (a key change disconnects
            // the tenant's sockets); only the expiry can have changed since.
            let claims = self.conn_claims.clone();
            let now = unix_now();
            if claims.exp <= now {
                let err = TokenError::Expired {
                    seconds_ago: now - claims.exp,
                };
                return Err(Refusal::from_error(&err));
            }
            claims
        } else {
            self.verify(&token).map_err(|e| Refusal::from_error(&e))?
        };
        if config.private {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                format!("You do not have permissions to read from this Channel topic: {sub_topic}"),
            ));
        }
        if config.replay.is_some() {
            return Err(Refusal::new(
                ErrorCode::UnableToReplayMessages,
                "Replay is not allowed for public channels",
            ));
        }
        if self.user.is_none() {
            // Counted once per socket, at its first successful join (PROTOCOL.md 3.2).
            let user = self
                .limiter
                .admit_user(&tenant.limits)
                .map_err(|err| Refusal::from_error(&err))?;
            self.user = Some(user);
        }
        Ok((token, claims))
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
                    "ok",
                    "{}",
                );
                self.push(
                    out,
                    join_ref,
                    join_ref,
                    &msg.topic,
                    phoenix::EVENT_CLOSE,
                    "{}",
                );
            }
            None => self.reply(
                out,
                msg.join_ref.as_deref(),
                msg.reference.as_deref(),
                &msg.topic,
                "ok",
                "{}",
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

    /// Ends a channel from the server side: `system` error with `message`, then `phx_close`.
    fn shutdown(&mut self, topic: &str, code: ErrorCode, message: &str, out: &mut Vec<Frame>) {
        let Some(channel) = self.channels.remove(topic) else {
            return;
        };
        self.drop_channel(&channel);
        tracing::info!(error_code = %code, tenant = %self.tenant.external_id, topic, reason = message, "channel shutdown");
        let payload = format!(
            r#"{{"extension":"system","status":"error","message":{},"channel":{}}}"#,
            json_string(message),
            json_string(&channel.room.sub_topic)
        );
        let join_ref = channel.join_ref.as_deref();
        self.push(out, join_ref, None, topic, phoenix::EVENT_SYSTEM, &payload);
        self.push(out, join_ref, join_ref, topic, phoenix::EVENT_CLOSE, "{}");
    }

    fn channel_push(&mut self, msg: Inbound, out: &mut Vec<Frame>) {
        let now = std::time::Instant::now();
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

    fn broadcast_push(&mut self, msg: Inbound, out: &mut Vec<Frame>, now: std::time::Instant) {
        let channel = &self.channels[&msg.topic];
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
                    "error",
                    r#""payload_size_exceeded""#,
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
                "ok",
                "{}",
            );
        }
    }

    /// Pushes `presence_state` after a join, or shuts the channel down when the tenant's
    /// presence rate is exceeded (PROTOCOL.md 5.2, 5.4).
    fn push_presence_state(&mut self, topic: &str, out: &mut Vec<Frame>) {
        let now = std::time::Instant::now();
        if let Err(err) = self.limiter.check_presence_event(&self.tenant.limits, now) {
            self.shutdown(topic, err.code(), err.client_text(), out);
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
            InboundPayload::UserBroadcast(_) => "{}",
        };
        let payload: Map<String, Value> = serde_json::from_str(raw).unwrap_or_default();
        let topic = msg.topic.as_str();
        let reference = msg.reference.as_deref();
        let Some(channel) = self.channels.get_mut(topic) else {
            return;
        };
        let join_ref = channel.join_ref.clone();
        let Some(event) = payload.get("event") else {
            self.reply(out, join_ref.as_deref(), reference, topic, "ok", "{}");
            return;
        };
        if let Err(err) = Limits::check_client_presence(&mut channel.presence_window, now) {
            self.shutdown(topic, err.code(), err.client_text(), out);
            return;
        }
        let (room, key, slot) = (
            channel.room.clone(),
            channel.presence_key.clone(),
            channel.slot,
        );
        match event.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("track") => {
                let meta = match payload.get("payload") {
                    None => Map::new(),
                    Some(Value::Object(meta)) => meta.clone(),
                    Some(_) => {
                        tracing::info!(error_code = %ErrorCode::InvalidPresencePayload, tenant = %self.tenant.external_id,
                            topic, "presence track payload is not a map");
                        let response = format!(
                            "{{\"reason\":{}}}",
                            json_string("Presence track payload must be a map")
                        );
                        self.reply(
                            out,
                            join_ref.as_deref(),
                            reference,
                            topic,
                            "error",
                            &response,
                        );
                        return;
                    }
                };
                let max = self.tenant.limits.max_payload_size_in_kb as usize * 1000;
                if raw.len() > max {
                    self.shutdown(
                        topic,
                        ErrorCode::PayloadSizeExceeded,
                        "Track message size exceeded",
                        out,
                    );
                    return;
                }
                if let Err(err) = self.limiter.check_presence_event(&self.tenant.limits, now) {
                    self.shutdown(topic, err.code(), err.client_text(), out);
                    return;
                }
                self.ctx.presence.track(&room, &key, &meta, self.conn, slot);
                self.reply(out, join_ref.as_deref(), reference, topic, "ok", "{}");
            }
            Some("untrack") => {
                self.ctx.presence.untrack(self.conn, slot);
                self.reply(out, join_ref.as_deref(), reference, topic, "ok", "{}");
            }
            _ => {
                tracing::info!(error_code = %ErrorCode::UnknownPresenceEvent, tenant = %self.tenant.external_id,
                    topic, event = %event, "unknown presence event");
                self.reply(out, join_ref.as_deref(), reference, topic, "error", "{}");
            }
        }
    }

    fn refresh_token(&mut self, topic: &str, token: String, out: &mut Vec<Frame>) {
        let channel = &self.channels[topic];
        if token.starts_with("sb_") || token == channel.token {
            return;
        }
        match self.verify(&token) {
            Ok(claims) => {
                let expires_at = expiry_instant(claims.exp, unix_now());
                if let Some(channel) = self.channels.get_mut(topic) {
                    channel.token = token;
                    channel.claims = claims;
                    channel.expires_at = expires_at;
                }
            }
            Err(err) => {
                let code = err.code();
                self.shutdown(topic, code, &err.client_message(), out);
            }
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
            for topic in delivered {
                self.shutdown(&topic, err.code(), err.client_text(), out);
            }
        }
    }

    /// Returns when the next joined channel's token expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.channels.values().map(|c| c.expires_at).min()
    }

    /// Shuts down the channels whose token has expired.
    pub fn expire_tokens(&mut self, out: &mut Vec<Frame>) {
        let now = Instant::now();
        let unix = unix_now();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires_at <= now)
            .map(|(t, c)| (t.clone(), c.claims.exp))
            .collect();
        for (topic, exp) in expired {
            let message = TokenError::Expired {
                seconds_ago: (unix - exp).max(0),
            }
            .client_message();
            self.shutdown(&topic, ErrorCode::InvalidJWTToken, &message, out);
        }
    }

    /// Tells every channel the server requested a disconnect; the socket then closes (1012).
    pub fn tenant_disconnect(&mut self, out: &mut Vec<Frame>) -> SessionControl {
        let payload =
            r#"{"extension":"system","status":"ok","message":"Server requested disconnect"}"#;
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.push(out, None, None, &topic, phoenix::EVENT_SYSTEM, payload);
        }
        SessionControl::Close {
            code: CLOSE_SERVICE_RESTART,
            reason: "server requested disconnect",
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
