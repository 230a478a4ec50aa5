//! Bearer tokens of the management API (PROTOCOL.md 10.1).
//!
//! HS256/384/512 signed with `API_JWT_SECRET` or `API_JWT_SECRET_NEXT`; not in
//! `API_TOKEN_BLOCKLIST`; `exp` and `iat` checked only when present; every
//! `JWT_CLAIM_VALIDATORS` entry must match exactly. No claim is required.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::Secret;
use crate::error::{ErrorCode, OperationalError};

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

/// Why a token was refused. Carries no token text or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWT, or its header or claims are not valid JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm other than HS256/384/512 (including `none`).
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    /// No configured secret verifies the signature.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `iat` is in the future, or `exp`/`iat` is not a number.
    #[error("invalid {0} claim")]
    BadTimeClaim(&'static str),
    /// The token is listed in `API_TOKEN_BLOCKLIST`.
    #[error("token is blocklisted")]
    Blocklisted,
    /// A `JWT_CLAIM_VALIDATORS` claim is missing or differs.
    #[error("claim {0} does not match the required value")]
    ClaimMismatch(String),
    /// The start-up self-test could not sign or verify (no usable crypto backend).
    #[error("JWT self-test failed: {0}")]
    SelfTest(String),
}

impl OperationalError for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Malformed => ErrorCode::MalformedJWT,
            AuthError::BadSignature | AuthError::AlgorithmNotAllowed(_) => {
                ErrorCode::JwtSignatureError
            }
            AuthError::SelfTest(_) => ErrorCode::JwtSignerError,
            _ => ErrorCode::InvalidJWTToken,
        }
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// Allowed clock skew for `iat`, seconds (a token minted "now" on a slightly fast clock).
const IAT_SKEW_SECS: u64 = 5;

/// Verifies a management API bearer token and returns its claims.
///
/// `secrets` are tried in order (`API_JWT_SECRET`, then `API_JWT_SECRET_NEXT`).
///
/// # Errors
/// The first rule the token breaks, as an [`AuthError`].
pub fn verify_api_token(
    token: &str,
    secrets: &[&Secret],
    blocklist: &[Secret],
    claim_validators: &Map<String, Value>,
) -> Result<Claims, AuthError> {
    if blocklist.iter().any(|blocked| blocked.expose() == token) {
        return Err(AuthError::Blocklisted);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|err| match err.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAllowed("unknown".into())
        }
        _ => AuthError::Malformed,
    })?;
    if !matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims = HashSet::new();
    validation.validate_aud = false;
    validation.validate_exp = true;
    validation.validate_nbf = false;
    validation.leeway = 0;

    let mut outcome = Err(AuthError::BadSignature);
    for secret in secrets {
        let key = DecodingKey::from_secret(secret.expose().as_bytes());
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => {
                outcome = Ok(data.claims);
                break;
            }
            Err(err) => {
                use jsonwebtoken::errors::ErrorKind;
                let mapped = match err.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidClaimFormat(_) => AuthError::BadTimeClaim("exp"),
                    _ => AuthError::Malformed,
                };
                outcome = Err(mapped);
                break;
            }
        }
    }
    let claims = outcome?;

    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_f64().ok_or(AuthError::BadTimeClaim("iat"))?;
        let now = jsonwebtoken::get_current_timestamp();
        if iat > (now + IAT_SKEW_SECS) as f64 {
            return Err(AuthError::BadTimeClaim("iat"));
        }
    }
    for (claim, expected) in claim_validators {
        if claims.get(claim) != Some(expected) {
            return Err(AuthError::ClaimMismatch(claim.clone()));
        }
    }
    Ok(claims)
}

/// Signs and verifies one HS256 token, proving a crypto backend of `jsonwebtoken` works.
///
/// # Errors
/// [`AuthError::SelfTest`] when signing or verifying fails or panics (no or two backends).
pub fn self_test() -> Result<(), AuthError> {
    let run = || -> Result<(), String> {
        let secret = Secret::new("realtime-self-test-secret-realtime-self-test");
        let mut claims = Claims::new();
        claims.insert("role".into(), "self-test".into());
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose().as_bytes()),
        )
        .map_err(|err| format!("signing failed: {err}"))?;
        let verified = verify_api_token(&token, &[&secret], &[], &Map::new())
            .map_err(|err| format!("verification failed: {err}"))?;
        if verified != claims {
            return Err("verified claims differ from the signed ones".into());
        }
        Ok(())
    };
    match std::panic::catch_unwind(run) {
        Ok(result) => result.map_err(AuthError::SelfTest),
        Err(_) => Err(AuthError::SelfTest(
            "jsonwebtoken panicked (no crypto backend compiled in?)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

    fn sign(alg: Algorithm, claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verify(token: &str) -> Result<Claims, AuthError> {
        verify_api_token(token, &[&Secret::new(SECRET)], &[], &Map::new())
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn hs_family_without_claims_is_accepted() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(verify(&sign(alg, json!({}), SECRET)).is_ok(), "{alg:?}");
        }
        let claims = verify(&sign(
            Algorithm::HS256,
            json!({"aud":"x","role":"a"}),
            SECRET,
        ))
        .unwrap();
        assert_eq!(claims["role"], "a");
    }

    #[test]
    fn self_test_passes() {
        self_test().unwrap();
    }

    #[test]
    fn wrong_secret_expired_and_future_iat_are_refused() {
        assert_eq!(
            verify(&sign(Algorithm::HS256, json!({}), "another-secret")),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(&sign(Algorithm::HS256, json!({"exp": now() - 10}), SECRET)),
            Err(AuthError::Expired)
        );
        assert!(
            verify(&sign(
                Algorithm::HS256,
                json!({"exp": now() + 60, "iat": now()}),
                SECRET
            ))
            .is_ok()
        );
        assert_eq!(
            verify(&sign(
                Algorithm::HS256,
                json!({"iat": now() + 3600}),
                SECRET
            )),
            Err(AuthError::BadTimeClaim("iat"))
        );
        assert_eq!(verify("not-a-jwt"), Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(br#"{"role":"admin"}"#)
        );
        assert!(matches!(
            verify(&token),
            Err(AuthError::AlgorithmNotAllowed(_)) | Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn next_secret_blocklist_and_claim_validators() {
        let next = Secret::new("next-secret-next-secret-next-secret-000");
        let token = sign(Algorithm::HS256, json!({"iss":"supabase"}), next.expose());
        let current = Secret::new(SECRET);
        assert!(verify_api_token(&token, &[&current, &next], &[], &Map::new()).is_ok());
        assert_eq!(
            verify_api_token(
                &token,
                &[&current, &next],
                &[Secret::new(token.clone())],
                &Map::new()
            ),
            Err(AuthError::Blocklisted)
        );
        let validators = json!({"iss":"supabase"}).as_object().unwrap().clone();
        assert!(verify_api_token(&token, &[&next], &[], &validators).is_ok());
        let validators = json!({"iss":"other"}).as_object().unwrap().clone();
        assert_eq!(
            verify_api_token(&token, &[&next], &[], &validators),
            Err(AuthError::ClaimMismatch("iss".into()))
        );
    }
}
