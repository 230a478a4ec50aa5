//! Authentication: JWT verification of client tokens against each tenant's keys.
//! The only module that uses `jsonwebtoken`.

mod client_token;

pub use client_token::{Claims, TenantKeys, TokenError, verify_client_token};
