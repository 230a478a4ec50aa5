//! The admission decision of a `phx_join` (PROTOCOL.md 3.2), pure: the tenant record, the join
//! config, what the socket knows, the tenant's counters and the clock in; a decision out. No
//! I/O and no waiting; the tenant lookup and, for a private channel, the read check of
//! `authorization` happen around it in the join's preparation (`session.rs`).
//!
//! Order, first failure wins: topic, node draining, [tenant lookup], `suspend`, `private_only`,
//! concurrent users (only while the socket is not counted), joins per second, channels per
//! socket, channel JWT, private-channel check, replay.

use std::time::Instant;

use serde_json::{Map, Value};

use super::error::JoinError;
use super::join::JoinConfig;
use crate::auth::{Claims, TenantKeys, TokenError, verify_client_token};
use crate::limits::TenantLimiter;
use crate::tenants::Tenant;

/// What the socket knows when a join is decided.
#[derive(Clone, Copy, Debug)]
pub(super) struct SocketFacts<'a> {
    /// The connection JWT.
    pub conn_token: &'a str,
    /// Its claims, verified at the handshake.
    pub conn_claims: &'a Claims,
    /// Channels joined, not counting one that this join replaces.
    pub joined_channels: usize,
    /// The socket already counts toward `max_concurrent_users`.
    pub user_counted: bool,
}

/// The clock of one decision.
#[derive(Clone, Copy, Debug)]
pub(super) struct Now {
    /// Seconds since the epoch, for token expiry.
    pub unix: i64,
    /// For the rate counters.
    pub instant: Instant,
}

/// A join the pipeline admits: the channel's token and its claims.
#[derive(Clone, Debug)]
pub(super) struct Admitted {
    /// `access_token` of the join, else the connection JWT.
    pub token: String,
    /// The token's claims.
    pub claims: Claims,
}

/// The steps before the tenant lookup: the topic, then node draining.
pub(super) fn check_before_lookup(sub_topic: &str, draining: bool) -> Result<(), JoinError> {
    if sub_topic.is_empty() {
        return Err(JoinError::TopicNameRequired);
    }
    if draining {
        return Err(JoinError::Restarting);
    }
    Ok(())
}

/// The steps after the tenant lookup, in protocol order, up to the private-channel check (which
/// the caller runs next for a private channel). Counts nothing: the join was counted when it
/// arrived, and the user is counted when the join completes.
pub(super) fn decide(
    tenant: &Tenant,
    config: &JoinConfig,
    socket: SocketFacts<'_>,
    limiter: &TenantLimiter,
    claim_validators: &Map<String, Value>,
    now: Now,
) -> Result<Admitted, JoinError> {
    if tenant.suspend {
        return Err(JoinError::TenantSuspended);
    }
    if tenant.private_only && !config.private {
        return Err(JoinError::PrivateOnly);
    }
    if !socket.user_counted {
        limiter
            .check_concurrent_users(&tenant.limits)
            .map_err(JoinError::Limit)?;
    }
    limiter
        .check_join_rate(&tenant.limits, now.instant)
        .map_err(JoinError::Limit)?;
    let max_channels = tenant.limits.max_channels_per_client;
    if socket.joined_channels >= max_channels as usize {
        return Err(JoinError::TooManyChannels {
            limit: max_channels,
        });
    }
    let admitted = match config.token.as_deref() {
        Some(token) if !token.starts_with("sb_") && token != socket.conn_token => {
            let keys = TenantKeys {
                jwt_secret: tenant.jwt_secret.as_ref(),
                jwks: tenant.jwt_jwks.as_ref(),
            };
            let claims = verify_client_token(token, keys, claim_validators, now.unix)
                .map_err(JoinError::Token)?;
            Admitted {
                token: token.to_string(),
                claims,
            }
        }
        _ => {
            // Verified at the handshake against the same tenant keys (a key change disconnects
            // the tenant's sockets); only the expiry can have changed since.
            let exp = socket.conn_claims.exp;
            if exp <= now.unix {
                return Err(JoinError::Token(TokenError::Expired {
                    seconds_ago: now.unix - exp,
                }));
            }
            Admitted {
                token: socket.conn_token.to_string(),
                claims: socket.conn_claims.clone(),
            }
        }
    };
    // A private channel's read check needs the tenant database: it runs after this decision
    // in the join's preparation (`authorization`). Replay is for private channels only.
    match (&config.replay, config.private) {
        (Some(_), false) => Err(JoinError::ReplayOnPublicChannel),
        (Some(Err(())), true) => Err(JoinError::ReplayParamsInvalid),
        _ => Ok(admitted),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::{Limits, LimitsConfig};
    use crate::types::TenantId;

    const CONN_TOKEN: &str = "conn.jwt.token";

    fn claims(exp: i64) -> Claims {
        Claims {
            all: Map::new(),
            role: "anon".into(),
            exp,
            sub: None,
        }
    }

    struct Case {
        tenant: Tenant,
        config: JoinConfig,
        claims: Claims,
        joined_channels: usize,
        user_counted: bool,
        limiter: TenantLimiter,
        now: Now,
    }

    impl Case {
        fn new() -> Case {
            let instant = Instant::now();
            let limits = Limits::new(LimitsConfig::for_test());
            Case {
                tenant: Tenant::for_test("t"),
                config: JoinConfig::parse(r#"{"config":{"private":false}}"#),
                claims: claims(2_000),
                joined_channels: 0,
                user_counted: false,
                limiter: limits.tenant(&TenantId::from("t"), instant),
                now: Now {
                    unix: 1_000,
                    instant,
                },
            }
        }

        fn decide(&self) -> Result<Admitted, JoinError> {
            decide(
                &self.tenant,
                &self.config,
                SocketFacts {
                    conn_token: CONN_TOKEN,
                    conn_claims: &self.claims,
                    joined_channels: self.joined_channels,
                    user_counted: self.user_counted,
                },
                &self.limiter,
                &Map::new(),
                self.now,
            )
        }
    }

    #[test]
    fn topic_then_draining_are_checked_before_the_lookup() {
        assert_eq!(
            check_before_lookup("", true),
            Err(JoinError::TopicNameRequired)
        );
        assert_eq!(check_before_lookup("a", true), Err(JoinError::Restarting));
        assert_eq!(check_before_lookup("a", false), Ok(()));
    }

    #[test]
    fn a_plain_join_is_admitted_with_the_connection_token() {
        let admitted = Case::new().decide().unwrap();
        assert_eq!(admitted.token, CONN_TOKEN);
        assert_eq!(admitted.claims.exp, 2_000);
        // An `sb_` key or the connection token itself also means the connection token.
        let mut case = Case::new();
        case.config = JoinConfig::parse(r#"{"config":{},"access_token":"sb_publishable_x"}"#);
        assert_eq!(case.decide().unwrap().token, CONN_TOKEN);
    }

    /// Each check refuses on its own, and when several fail the earliest in protocol order wins.
    #[test]
    fn the_first_failing_step_in_protocol_order_wins() {
        // Everything wrong at once, then fixed one step at a time.
        let mut case = Case::new();
        case.tenant.suspend = true;
        case.tenant.private_only = true;
        case.tenant.limits.max_concurrent_users = 0;
        case.tenant.limits.max_channels_per_client = 1;
        case.joined_channels = 1;
        case.claims = claims(990);
        case.config = JoinConfig::parse(
            r#"{"config":{"broadcast":{"replay":{"since":1}}},"access_token":"not-a-jwt"}"#,
        );
        assert_eq!(case.decide().unwrap_err(), JoinError::TenantSuspended);
        case.tenant.suspend = false;
        assert_eq!(case.decide().unwrap_err(), JoinError::PrivateOnly);
        case.tenant.private_only = false;
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::Limit(crate::limits::LimitExceeded::ConcurrentUsers { limit: 0 })
        );
        case.user_counted = true;
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::TooManyChannels { limit: 1 }
        );
        case.joined_channels = 0;
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::Token(TokenError::Malformed)
        );
        case.config =
            JoinConfig::parse(r#"{"config":{"private":true,"broadcast":{"replay":{"since":1}}}}"#);
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::Token(TokenError::Expired { seconds_ago: 10 })
        );
        case.claims = claims(2_000);
        // A private join (replay included) passes: its read check follows the decision.
        assert_eq!(case.decide().unwrap().token, CONN_TOKEN);
        case.config = JoinConfig::parse(r#"{"config":{"broadcast":{"replay":{"since":1}}}}"#);
        assert_eq!(case.decide().unwrap_err(), JoinError::ReplayOnPublicChannel);
        case.config =
            JoinConfig::parse(r#"{"config":{"private":true,"broadcast":{"replay":{"limit":3}}}}"#);
        assert_eq!(case.decide().unwrap_err(), JoinError::ReplayParamsInvalid);
    }

    #[test]
    fn the_joins_rate_is_checked_after_users_and_before_channels() {
        let mut case = Case::new();
        case.tenant.limits.max_joins_per_second = 1;
        case.tenant.limits.max_channels_per_client = 0;
        for _ in 0..20 {
            case.limiter.count_join(case.now.instant);
        }
        // Still in the counter's first period: nothing trips yet.
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::TooManyChannels { limit: 0 }
        );
        case.now.instant += Duration::from_secs(5);
        let err = case.decide().unwrap_err();
        assert!(
            matches!(
                err,
                JoinError::Limit(crate::limits::LimitExceeded::Joins { limit: 1, .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.closes_socket(),
            Some(crate::close_code::CloseCode::GoingAway)
        );
        // The decision counted nothing itself.
        assert_eq!(case.limiter.rates(case.now.instant).joins, 2.0);
    }

    #[test]
    fn a_channel_token_is_verified_against_the_tenant_keys() {
        let mut case = Case::new();
        // Three parts, but not base64 JSON.
        case.config = JoinConfig::parse(r#"{"config":{},"access_token":"a.b.c"}"#);
        assert_eq!(
            case.decide().unwrap_err(),
            JoinError::Token(TokenError::Malformed)
        );
    }
}
