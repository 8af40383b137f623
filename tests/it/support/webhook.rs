//! Svix's signing, as Clerk's deliveries carry it.
use std::time::{SystemTime, UNIX_EPOCH};

use livermore_db::clerk::WebhookVerifier;

/// The secret the tests' services are started with.
pub const SECRET: &str = "whsec_c2VjcmV0LWtleS1vZi10aGUtdGVzdHMtMzItYnl0ZXM=";

/// Seconds since the epoch, as `svix-timestamp` carries them.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Svix's headers for `body`, signed with `secret` at `timestamp`.
pub fn signed(secret: &str, id: &str, timestamp: i64, body: &str) -> Vec<(&'static str, String)> {
    let signature =
        WebhookVerifier::from_list(secret)
            .unwrap()
            .sign(id, timestamp, body.as_bytes());
    vec![
        ("svix-id", id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", signature),
    ]
}
