//! Clerk's records as its API and webhooks send them, for the tests to build on.
use livermore_db::clerk::ClerkEvent;
use serde_json::{Value, json};

/// A fixed moment (2023-11-14), in Clerk's milliseconds: the records' `updated_at` and timestamps.
pub const T0: i64 = 1_700_000_000_000;

/// A Clerk user (`object: user`) with one verified address, `extra`'s fields added or replacing.
pub fn clerk_user(id: &str, email: &str, updated_at: i64, extra: Value) -> Value {
    let mut user = json!({
        "id": id,
        "object": "user",
        "email_addresses": [{"id": "idn_1", "email_address": email, "verification": {"status": "verified"}}],
        "primary_email_address_id": "idn_1",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "username": null,
        "image_url": "https://img.clerk.com/ada.png",
        "public_metadata": {},
        "private_metadata": {"ignored": true},
        "last_sign_in_at": null,
        "created_at": T0,
        "updated_at": updated_at,
        "external_accounts": []
    });
    if let (Value::Object(u), Value::Object(e)) = (&mut user, extra) {
        u.extend(e);
    }
    user
}

/// A webhook event of `kind` carrying `data`.
pub fn event(kind: &str, data: Value, timestamp: i64) -> ClerkEvent {
    serde_json::from_value(
        json!({"type": kind, "object": "event", "data": data, "timestamp": timestamp}),
    )
    .expect("an event")
}

/// Clerk's `user.deleted` event for `id`.
pub fn deleted(id: &str, timestamp: i64) -> ClerkEvent {
    event(
        "user.deleted",
        json!({"id": id, "object": "user", "deleted": true}),
        timestamp,
    )
}

/// A webhook event's body as Svix delivers it (timestamp `T0`).
pub fn event_body(kind: &str, data: Value) -> String {
    json!({"type": kind, "object": "event", "data": data, "timestamp": T0}).to_string()
}

/// The body of `user.created` for `sub` (address `<sub>@example.com`).
pub fn created_body(sub: &str) -> String {
    event_body(
        "user.created",
        clerk_user(sub, &format!("{sub}@example.com"), T0, json!({})),
    )
}
