//! One task per socket: reads client frames into the session, writes replies and queued
//! fan-out in batches (feed every frame, flush once), and enforces the timeouts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{
    CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_INVALID_PAYLOAD, CLOSE_NORMAL,
    CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, Transport,
};
use crate::channel::{Session, SessionControl};
use crate::error::ErrorCode;
use crate::hub::{ConnSignals, Frame, Outbound};
use crate::limits::TokenBucket;
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
}

fn to_message(frame: Frame) -> Option<Message> {
    match frame {
        // Text frames are built from Rust strings by the encoders; the check cannot fail.
        Frame::Text(bytes) => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        Frame::Binary(bytes) => Some(Message::Binary(bytes)),
    }
}

/// Runs the socket until it closes.
///
/// The futures that register wake-ups (slow-consumer mark, node shutdown, the timer) are
/// created once and polled again on every turn, so a turn that only drains fan-out does no
/// timer or waiter registration.
pub(super) async fn run_socket(params: SocketParams) {
    let SocketParams {
        socket,
        mut session,
        mut rx,
        signals,
        vsn,
        transport,
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
    let mut shutdown_rx = transport.shutdown.clone();
    let shutdown = async move {
        // Resolves when the node drains, or when its sender is gone.
        while !*shutdown_rx.borrow_and_update() {
            if shutdown_rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(shutdown);
    // One timer for every deadline: idle timeout, no-channel timeout, token expiry. It may fire
    // early (a deadline moved later); the check below then only re-arms it.
    let wanted = |session: &Session, last_inbound: Instant, empty_since: Option<Instant>| {
        [
            Some(last_inbound + config.idle_timeout),
            empty_since.map(|t| t + transport.no_channel_timeout),
            session.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(last_inbound + config.idle_timeout)
    };
    let mut armed = wanted(&session, last_inbound, empty_since);
    let timer = sleep_until(armed);
    tokio::pin!(timer);

    let close: (u16, &'static str) = loop {
        let mut rearm = false;
        let control = tokio::select! {
            biased;
            () = &mut slow => SessionControl::Close { code: CLOSE_SLOW_CONSUMER, reason: "slow consumer" },
            () = &mut shutdown => SessionControl::Close { code: CLOSE_GOING_AWAY, reason: "server shutting down" },
            item = rx.recv() => {
                let mut control = SessionControl::Continue;
                let mut next = item;
                let mut handled = 0;
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Fanout { slot, kind, frame } => session.fanout(slot, kind, frame, &mut out),
                        Outbound::Direct(frame) => out.push(frame),
                        Outbound::TenantDisconnect => {
                            control = session.tenant_disconnect(&mut out);
                            break;
                        }
                        Outbound::Close { code, reason } => {
                            control = SessionControl::Close { code, reason };
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
            frame = stream.next() => {
                last_inbound = Instant::now();
                rearm = true;
                match frame {
                    None | Some(Ok(Message::Close(_))) => break (CLOSE_NORMAL, ""),
                    Some(Err(err)) => {
                        // tungstenite reports oversized messages as a capacity error.
                        let text = err.to_string();
                        if text.contains("UTF-8") {
                            tracing::info!(error_code = %ErrorCode::MalformedWebSocketMessage, error = %text, "text frame is not UTF-8");
                            break (CLOSE_INVALID_PAYLOAD, "text frame is not valid UTF-8");
                        }
                        if text.contains("too long") || text.contains("Space limit") {
                            tracing::info!(error_code = %ErrorCode::MalformedWebSocketMessage, error = %text, "frame too large");
                            break (CLOSE_TOO_BIG, "frame too large");
                        }
                        tracing::debug!(error = %text, "websocket read failed");
                        break (CLOSE_INTERNAL, "");
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
                            match decoded {
                                Ok(inbound) => session.handle(inbound, &mut out).await,
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
                    SessionControl::Close { code: CLOSE_IDLE, reason: "idle timeout" }
                } else if empty_since.is_some_and(|t| now >= t + transport.no_channel_timeout) {
                    SessionControl::Close { code: CLOSE_NORMAL, reason: "no channels joined" }
                } else {
                    session.expire_tokens(&mut out);
                    SessionControl::Continue
                }
            }
        };
        let was_empty = empty_since.is_some();
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
                Ok(Err(_)) => break (CLOSE_INTERNAL, "write failed"),
                Err(_) => break (CLOSE_INTERNAL, "write timed out"),
            }
        }
        if let SessionControl::Close { code, reason } = control {
            break (code, reason);
        }
    };
    let (code, reason) = close;
    tracing::debug!(code, reason, "closing socket");
    if !reason.is_empty() || code != CLOSE_NORMAL {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
}
