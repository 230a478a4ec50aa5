//! Errors and rate-limit hits by code, counted from the log: every error is logged once with
//! its operational code as the field `error_code` (see `telemetry`), so a `tracing` layer that
//! sees those events counts them without touching the modules that produce them.
//!
//! The layer's own filter enables only the callsites that have an `error_code` field, at any
//! level and whatever `LOG_LEVEL` says, so counting does not depend on what is printed and
//! other callsites stay disabled (tracing caches that per callsite).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};

use crate::error::ErrorCode;

/// The field that carries an operational code.
pub const CODE_FIELD: &str = "error_code";

/// Counts the events that carry an operational code into `realtime_errors_total` and, for the
/// rate-limit codes, `realtime_rate_limit_hits_total`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodeCounter;

/// Enables exactly the events with an [`CODE_FIELD`] field.
#[derive(Clone, Copy, Debug, Default)]
pub struct HasCode;

fn has_code(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.fields().field(CODE_FIELD).is_some()
}

impl<S> Filter<S> for HasCode {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        has_code(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if has_code(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

static INDEX: LazyLock<HashMap<&'static str, usize>> = LazyLock::new(|| {
    ErrorCode::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect()
});

/// The position in [`ErrorCode::ALL`] of the code printed as `text`.
fn code_index(text: &str) -> Option<usize> {
    INDEX.get(text).copied()
}

/// A fixed buffer for the code's text: no allocation per event; longer text is no code.
struct CodeText {
    buf: [u8; 64],
    len: usize,
    overflow: bool,
}

impl Default for CodeText {
    fn default() -> CodeText {
        CodeText {
            buf: [0; 64],
            len: 0,
            overflow: false,
        }
    }
}

impl std::fmt::Write for CodeText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            self.overflow = true;
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl CodeText {
    fn as_str(&self) -> Option<&str> {
        if self.overflow {
            return None;
        }
        std::str::from_utf8(&self.buf[..self.len]).ok()
    }
}

#[derive(Default)]
struct CodeVisitor {
    index: Option<usize>,
}

impl Visit for CodeVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == CODE_FIELD {
            self.index = code_index(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == CODE_FIELD {
            // `%code` records a Display value, whose Debug prints the Display text.
            let mut text = CodeText::default();
            let _ = write!(text, "{value:?}");
            self.index = text.as_str().and_then(code_index);
        }
    }
}

impl<S: Subscriber> Layer<S> for CodeCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = CodeVisitor::default();
        event.record(&mut visitor);
        if let Some(index) = visitor.index {
            super::registered().count_code(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn errors(code: ErrorCode) -> u64 {
        let index = code_index(code.as_str()).expect("known code");
        super::super::registered().errors[index].get()
    }

    fn hits(code: ErrorCode) -> Option<u64> {
        let index = code_index(code.as_str()).expect("known code");
        super::super::registered().rate_limit_hits[index]
            .as_ref()
            .map(|c| c.get())
    }

    #[test]
    fn events_with_a_code_are_counted_whatever_their_level() {
        let subscriber = tracing_subscriber::registry().with(CodeCounter.with_filter(HasCode));
        let code = ErrorCode::ChannelRateLimitReached;
        let other = ErrorCode::UnableToHandleBroadcast;
        let (before, hits_before, other_before) = (errors(code), hits(code), errors(other));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(error_code = %code, "refused");
            tracing::debug!(error_code = %code, tenant = "t", "refused again");
            tracing::warn!(error_code = other.as_str(), "dropped");
            tracing::error!(error_code = "NotACode", "unknown codes are not counted");
            tracing::info!("no code");
        });
        assert_eq!(errors(code), before + 2);
        assert_eq!(hits(code), hits_before.map(|n| n + 2));
        assert_eq!(errors(other), other_before + 1);
        assert_eq!(hits(other), None, "not a rate limit");
    }

    #[test]
    fn overlong_text_is_no_code() {
        let mut text = CodeText::default();
        assert!(write!(text, "{}", "x".repeat(65)).is_err());
        assert_eq!(text.as_str(), None);
    }
}
