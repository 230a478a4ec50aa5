//! One task per socket: reads client frames into the session, polls the session's pending join
//! beside them, writes replies and queued fan-out in batches (feed every frame, flush once),
//! and enforces the timeouts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::Transport;
use crate::channel::{Session, SessionControl};
use crate::close_code::CloseCode;
use crate::error::ErrorCode;
use crate::hub::{ConnSignals, Frame, Outbound};
use crate::limits::TokenBucket;
use crate::metrics::{OutKind, SocketTally};
use crate::phoenix::{self, Vsn};

/// Most queued items handled before the writes are flushed.
const BATCH: usize = 256;

pub(super) struct SocketParams {
    pub socket: WebSocket,
    pub session: Session,
    pub rx: mpsc::Receiver<Outbound>,
    pub signals: Arc<ConnSignals>,
    pub vsn: Vsn,
    pub transport: Arc<Transport>,
    /// The socket's connection, channel and message counts (`metrics`).
    pub tally: SocketTally,
}

fn to_message(frame: Frame) -> Option<Message> {
    match frame {
        // Text frames are built from Rust strings by the encoders; the check cannot fail.
        Frame::Text(bytes) => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        Frame::Binary(bytes) => Some(Message::Binary(bytes)),
    }
}

/// The metrics' name of a fan-out kind.
fn out_kind(kind: crate::hub::FanoutKind) -> OutKind {
    match kind {
        crate::hub::FanoutKind::Broadcast => OutKind::Broadcast,
        crate::hub::FanoutKind::Presence => OutKind::Presence,
        crate::hub::FanoutKind::PostgresChanges => OutKind::PostgresChanges,
    }
}

/// Runs the socket until it closes.
///
/// The futures that register wake-ups (slow-consumer mark, node shutdown, the timer) are
/// created once and polled again on every turn, so a turn that only drains fan-out does no
/// timer or waiter registration. A join that has to wait (tenant reload) is polled here too, so
/// heartbeats and fan-out keep flowing meanwhile; while too many client frames wait behind it,
/// the socket stops reading.
pub(super) async fn run_socket(params: SocketParams) {
    let SocketParams {
        socket,
        mut session,
        mut rx,
        signals,
        vsn,
        transport,
        mut tally,
    } = params;
    let (mut sink, mut stream) = socket.split();
    let config = &transport.config;
    let mut out: Vec<Frame> = Vec::new();
    let mut flood = TokenBucket::per_second(
        config.max_frames_per_second.saturating_mul(2),
        config.max_frames_per_second,
        std::time::Instant::now(),
    );
    let mut last_inbound = Instant::now();
    let mut empty_since = Some(Instant::now());
    let mut dropped_floods: u64 = 0;

    let slow = signals.slow_marked();
    tokio::pin!(slow);
    let shutdown = transport.owner.cancelled();
    tokio::pin!(shutdown);
    // One timer for every deadline: idle timeout, no-channel timeout, token expiry, delayed join
    // refusals. It may fire early (a deadline moved later); the check below then only re-arms it.
    let wanted = |session: &Session, last_inbound: Instant, empty_since: Option<Instant>| {
        [
            Some(last_inbound + config.idle_timeout),
            empty_since.map(|t| t + transport.no_channel_timeout),
            session.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(last_inbound + config.idle_timeout)
    };
    let mut armed = wanted(&session, last_inbound, empty_since);
    let timer = sleep_until(armed);
    tokio::pin!(timer);

    // `None`: the client closed (its close frame was answered) or the connection is gone.
    let close: Option<(CloseCode, &'static str)> = loop {
        let mut rearm = false;
        let control = tokio::select! {
            biased;
            () = &mut slow => SessionControl::Close { code: CloseCode::SlowConsumer, reason: "slow consumer" },
            () = &mut shutdown => session.node_draining(&mut out),
            item = rx.recv() => {
                let mut control = SessionControl::Continue;
                let mut next = item;
                let mut handled = 0;
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Fanout { slot, kind, frame } => {
                            tally.outbound(out_kind(kind), frame.len());
                            session.fanout(slot, kind, frame, &mut out);
                        }
                        Outbound::TenantUpdated(tenant) => session.tenant_updated(tenant),
                        Outbound::TenantDisconnect => {
                            control = session.tenant_disconnect(&mut out);
                            break;
                        }
                    }
                    handled += 1;
                    if handled < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                session.after_fanout_batch(&mut out);
                control
            }
            prepared = session.prepared(), if session.has_pending() => {
                rearm = true;
                session.complete(prepared, &mut out)
            }
            frame = stream.next(), if session.reads_frames() => {
                last_inbound = Instant::now();
                rearm = true;
                match frame {
                    None => break None,
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite has queued the echo of the client's close frame (its code,
                        // RFC 6455 5.5.1); flushing writes it before the socket is dropped.
                        let _ = tokio::time::timeout(config.write_timeout, sink.flush()).await;
                        break None;
                    }
                    Some(Err(err)) => {
                        // tungstenite reports oversized messages as a capacity error.
                        let text = err.to_string();
                        if text.contains("UTF-8") {
                            tracing::info!(error_code = %ErrorCode::MalformedWebSocketMessage, error = %text, "text frame is not UTF-8");
                            break Some((CloseCode::InvalidPayload, "text frame is not valid UTF-8"));
                        }
                        if text.contains("too long") || text.contains("Space limit") {
                            tracing::info!(error_code = %ErrorCode::MalformedWebSocketMessage, error = %text, "frame too large");
                            break Some((CloseCode::TooBig, "frame too large"));
                        }
                        tracing::debug!(error = %text, "websocket read failed");
                        break Some((CloseCode::InternalError, ""));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => SessionControl::Continue,
                    Some(Ok(message)) => {
                        if !flood.try_take(1, std::time::Instant::now()) {
                            dropped_floods += 1;
                            if dropped_floods.is_power_of_two() {
                                tracing::warn!(error_code = %ErrorCode::MalformedWebSocketMessage, dropped = dropped_floods,
                                    "client sends frames faster than WS_MAX_FRAMES_PER_SECOND; frames dropped");
                            }
                            SessionControl::Continue
                        } else {
                            let decoded = match &message {
                                Message::Text(text) => phoenix::decode_text(vsn, text.as_str()),
                                Message::Binary(bytes) => phoenix::decode_binary(vsn, bytes),
                                _ => continue,
                            };
                            let len = match &message {
                                Message::Text(text) => text.len(),
                                Message::Binary(bytes) => bytes.len(),
                                _ => 0,
                            };
                            match decoded {
                                Ok(inbound) => {
                                    tally.inbound(&inbound.topic, &inbound.event, len);
                                    session.handle(inbound, &mut out)
                                }
                                Err(err) => {
                                    tracing::info!(error_code = %err.code(), error = %err, "dropped a malformed frame");
                                    SessionControl::Continue
                                }
                            }
                        }
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                rearm = true;
                if now >= last_inbound + config.idle_timeout {
                    SessionControl::Close { code: CloseCode::IdleTimeout, reason: "idle timeout" }
                } else if empty_since.is_some_and(|t| now >= t + transport.no_channel_timeout) {
                    SessionControl::Close { code: CloseCode::Normal, reason: "no channels joined" }
                } else {
                    session.on_timer(&mut out)
                }
            }
        };
        let was_empty = empty_since.is_some();
        tally.channels(session.channel_count());
        if session.channel_count() == 0 {
            empty_since.get_or_insert_with(Instant::now);
        } else {
            empty_since = None;
        }
        if rearm || was_empty != empty_since.is_some() {
            let next = wanted(&session, last_inbound, empty_since);
            if next != armed || timer.is_elapsed() {
                armed = next;
                timer.as_mut().reset(next);
            }
        }
        if !out.is_empty() {
            let write = async {
                for frame in out.drain(..) {
                    if let Some(message) = to_message(frame) {
                        sink.feed(message).await?;
                    }
                }
                sink.flush().await
            };
            match tokio::time::timeout(config.write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Some((CloseCode::InternalError, "write failed")),
                Err(_) => break Some((CloseCode::InternalError, "write timed out")),
            }
        }
        if let SessionControl::Close { code, reason } = control {
            break Some((code, reason));
        }
    };
    let Some((code, reason)) = close else {
        tracing::debug!("socket closed by the client");
        return;
    };
    tracing::debug!(%code, reason, "closing socket");
    let frame = CloseFrame {
        code: code.as_u16(),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}
