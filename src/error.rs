//! Operational error codes and the trait every module error implements.
//!
//! `ErrorCode` holds one variant per operational code of Supabase Realtime (PROTOCOL.md 12.3),
//! printed exactly as the original prints it. Logs carry the code as the structured field
//! `error_code`; client replies put it in front of the message (`<Code>: <message>`).
//! Edges (`transport`, `channel`, `api`) translate module errors into wire replies once, through
//! [`OperationalError`].

use std::fmt;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        /// An operational code of Supabase Realtime, as it appears in logs and client replies.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)+];

            /// Returns the code exactly as the original server prints it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)+
                }
            }
        }
    };
}

error_codes! {
    // Join reply prefixes (PROTOCOL.md 3.4).
    TopicNameRequired,
    TenantNotFound,
    RealtimeDisabledForTenant,
    PrivateOnly,
    ConnectionRateLimitReached,
    ClientJoinRateLimitReached,
    ChannelRateLimitReached,
    InvalidJWTToken,
    MalformedJWT,
    JwtSignatureError,
    JwtSignerError,
    Unauthorized,
    UnableToConnectToProject,
    InitializingProjectConnection,
    DatabaseLackOfConnections,
    DatabaseConnectionRateLimitReached,
    IncreaseConnectionPool,
    QueryCanceled,
    MissingPartition,
    RealtimeRestarting,
    TimeoutOnRpcCall,
    ErrorOnRpcCall,
    UnableToReplayMessages,
    UnknownErrorOnChannel,
    // WebSocket handshake (PROTOCOL.md 1.6).
    MissingAPIKey,
    JoinsRateLimitReached,
    ErrorConnectingToWebsocket,
    // Shutdown reasons and other log codes (PROTOCOL.md 12.2, 12.3).
    MessagePerSecondRateLimitReached,
    PresenceRateLimitReached,
    ClientPresenceRateLimitReached,
    ChannelShutdown,
    InvalidJoinPayload,
    RealtimeDisabledForConfiguration,
    UnableToSubscribeToPostgres,
    ReconnectSubscribeToPostgres,
    InvalidPresencePayload,
    UnableToHandlePresence,
    UnableToTrackPresence,
    UnknownPresenceEvent,
    UnableToSetPolicies,
    RlsPolicyError,
    UnableToHandleBroadcast,
    UnableToBroadcastChanges,
    MalformedWebSocketMessage,
    UnknownErrorOnWebSocketMessage,
    UnprocessableEntity,
    UnableToConnectToTenantDatabase,
    WarnSendingBroadcastMessage,
    PayloadSizeExceeded,
    SlowConsumer,
    // Server internals: metadata database, migrations, tenant database, encryption, cluster.
    MetadataDatabaseError,
    MigrationsFailed,
    TenantMigrationsFailed,
    TenantDatabaseError,
    EncryptionError,
    DecryptionError,
    InvalidConfiguration,
    RealtimeNodeDisconnected,
    ReplicationError,
    // Replication streams of Postgres Changes (this server's own log codes).
    ReplicationSlotBeingUsed,
    ReplicationSlotLagExceeded,
    InvalidPeerMessage,
    // The janitor (issue 10): a tenant's partitions could not be created or dropped.
    JanitorFailedToDeleteOldMessages,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every module error answers: its operational code and a message safe to show a client.
///
/// The client message never carries secrets, SQL text or addresses; the full error (with its
/// cause) goes to the log only.
pub trait OperationalError: std::error::Error {
    /// Returns the operational code logged with this error.
    fn code(&self) -> ErrorCode;

    /// Returns the message shown to clients, without the code prefix.
    fn client_message(&self) -> String;

    /// Returns `<Code>: <message>`, the shape of join error reasons.
    fn client_reason(&self) -> String {
        format!("{}: {}", self.code(), self.client_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_exactly_as_the_original() {
        assert_eq!(ErrorCode::TenantNotFound.to_string(), "TenantNotFound");
        assert_eq!(ErrorCode::InvalidJWTToken.as_str(), "InvalidJWTToken");
        assert_eq!(ErrorCode::MissingAPIKey.as_str(), "MissingAPIKey");
        assert_eq!(
            ErrorCode::MessagePerSecondRateLimitReached.as_str(),
            "MessagePerSecondRateLimitReached"
        );
    }

    #[test]
    fn every_code_is_distinct() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total);
    }
}
