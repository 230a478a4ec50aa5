//! JWT verification. Owns the `jsonwebtoken` crate; the rest of the node sees verified claims.
//!
//! - [`verify_api_token`]: bearer tokens of the management API (signed with `API_JWT_SECRET`).
//! - [`verify_client_token`]: client tokens (WebSocket connection, channel join, refresh, HTTP
//!   broadcast) against each tenant's `jwt_secret` / `jwt_jwks`.
//! - [`self_test`]: proves at start-up that a crypto backend is compiled in.

mod api_token;
mod client_token;
mod token_cache;

pub use api_token::{self_test, verify_api_token};
pub use client_token::{Claims, TenantKeys, TokenError, verify_client_token};
pub use token_cache::VerifiedTokens;
