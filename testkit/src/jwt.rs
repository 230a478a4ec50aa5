//! JWT minting: HS256 client tokens for the WebSocket and management API tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::fixtures::API_SECRET;

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// An HS256 token with `claims`, signed with `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a test token")
}

/// A valid management API token (role `service_role`, signed with [`API_SECRET`]).
pub fn api_token() -> String {
    sign(&json!({"role": "service_role"}), API_SECRET)
}

/// A client token with role `anon` expiring in `exp_in` seconds, signed with `secret`.
pub fn client_token(secret: &str, exp_in: i64) -> String {
    sign(&json!({"role": "anon", "exp": now() + exp_in}), secret)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode};

    use super::*;

    #[test]
    fn client_tokens_verify_with_their_secret_only() {
        let token = client_token("a-secret", 60);
        let claims = decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"a-secret"),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap()
        .claims;
        assert_eq!(claims["role"], "anon");
        let exp = claims["exp"].as_i64().unwrap();
        assert!((now() + 50..=now() + 60).contains(&exp));
        let wrong = decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"another"),
            &Validation::new(Algorithm::HS256),
        );
        assert!(wrong.is_err());
    }
}
