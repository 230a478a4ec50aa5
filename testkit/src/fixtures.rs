//! Shared secrets and request bodies: what the test nodes are configured with.

use serde_json::{Value, json};

/// `DB_ENC_KEY` of the test nodes.
pub const ENC_KEY: &str = "supabaserealtime";

/// `API_JWT_SECRET` of the test nodes; also the JWT secret of the seeded self-host tenant.
pub const API_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// The self-host tenant that a node started with `SEED_SELF_HOST=true` creates.
pub const SELF_HOST: &str = "realtime-dev";

/// An upsert body for tenant `id` with a `postgres` extension.
pub fn tenant_body(id: &str) -> Value {
    json!({"tenant": {
        "external_id": id,
        "name": "ignored on create",
        "jwt_secret": "tenant-jwt-secret-tenant-jwt-secret-000",
        "extensions": [{"type": "postgres", "settings": {
            "region": "us-east-1", "db_host": "db.example.internal", "db_port": "5432",
            "db_name": "postgres", "db_user": "supabase_admin", "db_password": "db-pass-123"
        }}]
    }})
}
