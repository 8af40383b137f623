//! Clerk's wire types: what a webhook or Clerk's user list delivers. Unknown fields are ignored.

use serde::Deserialize;

/// A webhook's envelope: `{"type": "user.updated", "data": {...}, "timestamp": 1700000000000, ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkEvent {
    /// `user.created`, `user.updated`, `user.deleted`, or another type (ignored).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload: a [`ClerkUser`], or for `user.deleted` a [`ClerkDeleted`].
    pub data: serde_json::Value,
    /// When Clerk emitted the event, in milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// How Clerk verified an email address.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkVerification {
    /// `verified`, `unverified`, `transferable`, `failed`, `expired`: only `verified` counts.
    #[serde(default)]
    pub status: Option<String>,
}

/// One email address of a Clerk user.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkEmailAddress {
    /// Clerk's id of the address (`idn_…`).
    pub id: String,
    /// The address.
    pub email_address: String,
    /// Clerk's verification of the address. `None` (older exports carry none) counts as verified.
    #[serde(default)]
    pub verification: Option<ClerkVerification>,
}

impl ClerkEmailAddress {
    /// Whether the address counts: Clerk says `verified`, or says nothing about it.
    pub fn is_verified(&self) -> bool {
        self.verification
            .as_ref()
            .is_none_or(|v| v.status.as_deref() == Some("verified"))
    }
}

/// Clerk's user object, as webhooks and the user list deliver it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkUser {
    /// Clerk's user id, `user_…`: the identity's subject.
    pub id: String,
    /// Every address of the user.
    #[serde(default)]
    pub email_addresses: Vec<ClerkEmailAddress>,
    /// Which of `email_addresses` is primary.
    #[serde(default)]
    pub primary_email_address_id: Option<String>,
    /// Given name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Clerk username, if the instance uses them.
    #[serde(default)]
    pub username: Option<String>,
    /// Profile picture.
    #[serde(default)]
    pub image_url: Option<String>,
    /// Public metadata; its `role` decides the user's role (see the [rules](super)).
    #[serde(default)]
    pub public_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Last sign-in, milliseconds since the epoch.
    #[serde(default)]
    pub last_sign_in_at: Option<i64>,
    /// Last change at Clerk, milliseconds since the epoch: orders the events.
    pub updated_at: i64,
}

/// A `user.deleted` event's data: `{"id": "user_…", "object": "user", "deleted": true}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClerkDeleted {
    /// Clerk's user id.
    pub id: String,
}

/// A JSON error described without any value from the body: serde's messages quote the offending
/// value ("invalid type: string \"…\""), so only "missing field" messages (which name a field of
/// ours) are kept whole.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let what = if message.starts_with("missing field") {
        return message;
    } else {
        match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "a value of the wrong type or shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}
