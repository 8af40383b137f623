//! Verifying Clerk's webhooks before anything is applied (feature `clerk-webhook`).
//!
//! Clerk sends webhooks through Svix, which follows the [Standard Webhooks] specification: each
//! request carries an id, a Unix timestamp and one or more signatures, `v1,<base64>`, each an
//! HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under a signing secret `whsec_<base64 key>`. Headers are
//! spelled `svix-id`/`svix-timestamp`/`svix-signature` or `webhook-id`/`webhook-timestamp`/
//! `webhook-signature`; both are accepted (never mixed within one request).
//!
//! An unverified endpoint lets anyone create users, grant themselves `admin` through
//! `public_metadata.role` or deactivate anyone: verify every request, then apply the event.
//!
//! - Signatures are compared in constant time (RustCrypto's `Mac::verify_slice`); any one valid
//!   signature under any one secret suffices, so secrets can be rotated (give both, old and new).
//! - The timestamp must be within a tolerance of now (default 5 minutes, either way): a captured
//!   request cannot be replayed later. Within the tolerance a replay is harmless: applying the same
//!   event again changes nothing ([`Outcome::Stale`](super::Outcome::Stale)).
//! - The body is bounded (default 1 MiB) and checked before any work.
//! - No error message holds a secret, a signature or any part of the body.
//!
//! [Standard Webhooks]: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
//!
//! # Examples
//!
//! ```
//! use livermore_db::clerk::{WebhookHeaders, WebhookVerifier};
//!
//! // Built once at start-up, from CLERK_WEBHOOK_SECRET (several secrets: space-separated).
//! let verifier = WebhookVerifier::from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//!
//! // Per request: the three headers (from any HTTP library's header map) and the raw body.
//! let request_headers = [
//!     ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
//!     ("svix-timestamp", "1614265330"),
//!     ("svix-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
//! ];
//! let headers = WebhookHeaders::from_lookup(|name| {
//!     request_headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
//! })?;
//! let body = br#"{"test": 2432232314}"#;
//!
//! // The example was signed in 2021: now it is a replay, refused.
//! assert!(verifier.verify(&headers, body).is_err());
//! # Ok::<(), livermore_db::clerk::WebhookError>(())
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::ClerkEvent;

/// How far a webhook's timestamp may be from now, either way, by default: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The largest body accepted by default: 1 MiB (Clerk's user events are a few KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The shortest signing key accepted, in bytes (Standard Webhooks: 24 to 64; Svix's are 24).
const MIN_KEY_BYTES: usize = 24;
/// The longest message id accepted.
const MAX_ID_BYTES: usize = 256;
/// The longest signature header accepted: every entry in it is read (Svix sends one per active
/// secret, about 50 bytes each; entries of versions other than `v1` are skipped, however many).
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 8 * 1024;

/// Why a webhook request was refused. No variant holds a secret, a signature or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// No signing secret was given to the verifier.
    #[error("no webhook signing secret given")]
    NoSecret,

    /// A signing secret is not `whsec_` followed by a base64 key of at least 24 bytes; `position`
    /// counts from 1 in the order given. The secret itself is never shown.
    #[error("webhook signing secret #{position} is malformed: {reason}")]
    BadSecret {
        /// Which secret, counting from 1.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A header the specification requires is absent in both spellings (`webhook-*`, `svix-*`).
    #[error("missing header {name} (or its svix- spelling)")]
    MissingHeader {
        /// The header's `webhook-*` name.
        name: &'static str,
    },

    /// A header is present but malformed (an empty or over-long id, a timestamp that is not whole
    /// seconds).
    #[error("malformed header {name}: {reason}")]
    BadHeader {
        /// The header's name as received.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No signature in the header matches the id, timestamp and body under any of the secrets.
    #[error("no valid webhook signature")]
    NoValidSignature,

    /// The timestamp is further in the past than the tolerance: a late replay.
    #[error("webhook timestamp is {age_secs} s old, over the tolerance of {tolerance_secs} s")]
    TimestampTooOld {
        /// How old it is, in seconds.
        age_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },

    /// The timestamp is further in the future than the tolerance.
    #[error("webhook timestamp is {ahead_secs} s ahead, over the tolerance of {tolerance_secs} s")]
    TimestampTooNew {
        /// How far ahead it is, in seconds.
        ahead_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },

    /// The body is larger than the verifier's limit; it was not read further.
    #[error("webhook body of {len} bytes is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The body's length (as far as known; at least `limit + 1`).
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// The body is validly signed but is not a Clerk event envelope (`{"type": …, "data": …}`). The
    /// reason names the position and, for a missing field, the field, never a value from the body.
    #[error("the body is not a Clerk event: {reason}")]
    NotClerkEvent {
        /// What is wrong, without values from the body.
        reason: String,
    },
}

impl WebhookError {
    /// Whether the request failed authentication (a missing or bad header, no valid signature, a
    /// timestamp out of tolerance): an HTTP service answers 401.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            WebhookError::MissingHeader { .. }
                | WebhookError::BadHeader { .. }
                | WebhookError::NoValidSignature
                | WebhookError::TimestampTooOld { .. }
                | WebhookError::TimestampTooNew { .. }
        )
    }
}

/// The three headers of one request, found in one spelling: `webhook-*` if `webhook-id` is present,
/// else `svix-*`.
#[derive(Clone, Copy)]
pub struct WebhookHeaders<'a> {
    id: &'a str,
    timestamp: &'a str,
    signature: &'a str,
    spelling: Spelling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    Standard,
    Svix,
}

impl Spelling {
    fn names(self) -> [&'static str; 3] {
        match self {
            Spelling::Standard => ["webhook-id", "webhook-timestamp", "webhook-signature"],
            Spelling::Svix => ["svix-id", "svix-timestamp", "svix-signature"],
        }
    }
}

impl fmt::Debug for WebhookHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookHeaders")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("signature", &"…")
            .field("spelling", &self.spelling)
            .finish()
    }
}

impl<'a> WebhookHeaders<'a> {
    /// Finds the headers through `get`, called with lower-case header names (`webhook-id`, …, or
    /// `svix-id`, …) and returning the value as text, or `None` when absent (or not text).
    ///
    /// With axum or any `http::HeaderMap`:
    /// `WebhookHeaders::from_lookup(|name| map.get(name).and_then(|v| v.to_str().ok()))`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, WebhookError> {
        let spelling = if get("webhook-id").is_some() {
            Spelling::Standard
        } else {
            Spelling::Svix
        };
        // Looked up in the spelling chosen; a missing one is reported by its `webhook-*` name.
        let find = |which: usize| {
            get(spelling.names()[which]).ok_or(WebhookError::MissingHeader {
                name: Spelling::Standard.names()[which],
            })
        };
        Ok(WebhookHeaders {
            id: find(0)?,
            timestamp: find(1)?,
            signature: find(2)?,
            spelling,
        })
    }

    /// The message id (the same on every retry of one message): name it in logs.
    pub fn id(&self) -> &'a str {
        self.id
    }

    fn name(&self, which: usize) -> &'static str {
        self.spelling.names()[which]
    }
}

/// A verified request: its message id and the Clerk event in its body.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    /// The message id (`svix-id`/`webhook-id`), the same on every retry.
    pub message_id: String,
    /// The signed timestamp, seconds since the epoch.
    pub timestamp: i64,
    /// The event.
    pub event: ClerkEvent,
}

/// Verifies webhook requests against one or more signing secrets. Build it once (it decodes the
/// secrets) and share it: it is cheap to clone and `Send + Sync`. See the [module docs](self).
#[derive(Clone)]
pub struct WebhookVerifier {
    keys: Vec<Hmac<Sha256>>,
    tolerance: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secrets", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl WebhookVerifier {
    /// A verifier accepting a signature under any of `secrets` (`whsec_<base64>`, as Clerk's
    /// dashboard shows them). At least one is required.
    pub fn new<I, S>(secrets: I) -> Result<Self, WebhookError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = secrets
            .into_iter()
            .enumerate()
            .map(|(i, secret)| signing_key(i + 1, secret.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        Ok(WebhookVerifier {
            keys,
            tolerance: DEFAULT_TOLERANCE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        })
    }

    /// A verifier from a whitespace-separated list of secrets, as in `CLERK_WEBHOOK_SECRET="whsec_new
    /// whsec_old"` while rotating.
    pub fn from_list(secrets: &str) -> Result<Self, WebhookError> {
        Self::new(secrets.split_whitespace())
    }

    /// Sets how far a timestamp may be from now, either way (default [`DEFAULT_TOLERANCE`]).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Sets the largest body accepted (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn with_max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The largest body accepted: give it to your HTTP server's body limit too, so that a larger
    /// body is never read into memory.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The `v1,<base64>` signature of a message under the first secret, as Svix computes it: for
    /// your tests (a signed request to your handler) and for replaying recorded deliveries.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.keys[0].clone();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// Verifies a request received now and parses its body as a [`ClerkEvent`].
    pub fn verify(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
    ) -> Result<VerifiedEvent, WebhookError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// Checks what can be checked before the body is read: the message id, the timestamp's form and
    /// its distance from `now`, and the signature header's size. An HTTP server calls it as soon as
    /// the headers are in, and refuses the request (401) without reading a body of up to
    /// [`max_body_bytes`](Self::max_body_bytes) from someone who cannot have signed it.
    /// [`verify_at`](Self::verify_at) checks all of this again. Returns the signed timestamp.
    pub fn check_headers(
        &self,
        headers: &WebhookHeaders<'_>,
        now: SystemTime,
    ) -> Result<i64, WebhookError> {
        if headers.id.is_empty() || headers.id.len() > MAX_ID_BYTES {
            return Err(WebhookError::BadHeader {
                name: headers.name(0),
                reason: "empty or longer than 256 bytes",
            });
        }
        let timestamp = parse_timestamp(headers.timestamp).ok_or(WebhookError::BadHeader {
            name: headers.name(1),
            reason: "not whole seconds since the epoch",
        })?;
        if headers.signature.len() > MAX_SIGNATURE_HEADER_BYTES {
            return Err(WebhookError::BadHeader {
                name: headers.name(2),
                reason: "longer than 8 KiB",
            });
        }
        self.check_time(timestamp, now)?;
        Ok(timestamp)
    }

    /// [`verify`](Self::verify) as of `now` (for tests and replays of recorded traffic).
    pub fn verify_at(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedEvent, WebhookError> {
        if body.len() > self.max_body_bytes {
            return Err(WebhookError::BodyTooLarge {
                len: body.len(),
                limit: self.max_body_bytes,
            });
        }
        let timestamp = self.check_headers(headers, now)?;
        self.check_signature(headers, body)?;
        let event = serde_json::from_slice::<ClerkEvent>(body).map_err(|e| {
            WebhookError::NotClerkEvent {
                reason: super::payload::describe_json_error(&e),
            }
        })?;
        Ok(VerifiedEvent {
            message_id: headers.id.to_owned(),
            timestamp,
            event,
        })
    }

    fn check_time(&self, timestamp: i64, now: SystemTime) -> Result<(), WebhookError> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        };
        let tolerance = self.tolerance.as_secs();
        let tolerance_secs = i64::try_from(tolerance).unwrap_or(i64::MAX);
        let difference = now.saturating_sub(timestamp);
        if difference > tolerance_secs {
            return Err(WebhookError::TimestampTooOld {
                age_secs: difference.unsigned_abs(),
                tolerance_secs: tolerance,
            });
        }
        if difference < -tolerance_secs {
            return Err(WebhookError::TimestampTooNew {
                ahead_secs: difference.unsigned_abs(),
                tolerance_secs: tolerance,
            });
        }
        Ok(())
    }

    fn check_signature(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        // The signatures given, decoded; entries of other versions or not base64 are skipped, as
        // the specification asks (a future scheme may sit beside `v1`).
        let candidates: Vec<Vec<u8>> = headers
            .signature
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .collect();
        if candidates.is_empty() {
            return Err(WebhookError::NoValidSignature);
        }
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(headers.id.as_bytes());
            mac.update(b".");
            mac.update(headers.timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            // `verify_slice` compares in constant time (and refuses a tag of another length).
            if candidates
                .iter()
                .any(|signature| mac.clone().verify_slice(signature).is_ok())
            {
                return Ok(());
            }
        }
        Err(WebhookError::NoValidSignature)
    }
}

/// Decodes one `whsec_` secret into a keyed HMAC. The secret never reaches an error.
fn signing_key(position: usize, secret: &str) -> Result<Hmac<Sha256>, WebhookError> {
    let bad = |reason| WebhookError::BadSecret { position, reason };
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or(bad("does not start with whsec_"))?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| bad("the part after whsec_ is not base64"))?;
    if key.len() < MIN_KEY_BYTES {
        return Err(bad("the key is shorter than 24 bytes"));
    }
    Hmac::<Sha256>::new_from_slice(&key).map_err(|_| bad("not a usable HMAC key"))
}

/// Whole seconds since the epoch: ASCII digits only (no sign, no space), at most 12 of them.
fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> Result<WebhookHeaders<'a>, WebhookError> {
        WebhookHeaders::from_lookup(|name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    /// The specification's example checks only the signature: its body is not a Clerk event.
    fn signature_of(verifier: &WebhookVerifier, h: &WebhookHeaders<'_>, body: &[u8]) -> bool {
        verifier.check_signature(h, body).is_ok()
    }

    #[test]
    fn the_specifications_example_verifies() {
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        for prefix in ["svix", "webhook"] {
            let pairs = [
                (format!("{prefix}-id"), ID),
                (format!("{prefix}-timestamp"), TIMESTAMP),
                (format!("{prefix}-signature"), SIGNATURE),
            ];
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let h = headers(&pairs).unwrap();
            assert!(signature_of(&verifier, &h, body), "{prefix}");
            assert_eq!(verifier.sign(ID, 1614265330, body), SIGNATURE);
            // The whole path, at the example's own time: signature and time pass; the body is not
            // a Clerk event.
            let err = verifier.verify_at(&h, body, at(1614265330)).unwrap_err();
            assert!(
                matches!(err, WebhookError::NotClerkEvent { ref reason } if reason == "missing field `type` at line 1 column 20"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn tampering_with_anything_signed_fails() {
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let ok = [
            ("svix-id", ID),
            ("svix-timestamp", TIMESTAMP),
            ("svix-signature", SIGNATURE),
        ];
        assert!(signature_of(&verifier, &headers(&ok).unwrap(), body));
        // The body, the timestamp, the id.
        assert!(!signature_of(
            &verifier,
            &headers(&ok).unwrap(),
            br#"{"test": 2432232315}"#
        ));
        let later = [
            ("svix-id", ID),
            ("svix-timestamp", "1614265331"),
            ("svix-signature", SIGNATURE),
        ];
        assert!(!signature_of(&verifier, &headers(&later).unwrap(), body));
        let other = [
            ("svix-id", "msg_other"),
            ("svix-timestamp", TIMESTAMP),
            ("svix-signature", SIGNATURE),
        ];
        assert!(!signature_of(&verifier, &headers(&other).unwrap(), body));
        // A wrong secret.
        let wrong = WebhookVerifier::from_list("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert!(!signature_of(&wrong, &headers(&ok).unwrap(), body));
        // Other versions, bad base64, truncated or empty signatures.
        for signature in [
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJE",
            "v1,",
            "",
            "v1,!!!!",
        ] {
            let h = [
                ("svix-id", ID),
                ("svix-timestamp", TIMESTAMP),
                ("svix-signature", signature),
            ];
            assert!(
                !signature_of(&verifier, &headers(&h).unwrap(), body),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn any_one_signature_under_any_one_secret_suffices() {
        let body = br#"{"test": 2432232314}"#;
        // Several signatures, the valid one last.
        let several = format!("v1,bm9wZQ== v2,abc {SIGNATURE}");
        let h = [
            ("webhook-id", ID),
            ("webhook-timestamp", TIMESTAMP),
            ("webhook-signature", several.as_str()),
        ];
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        assert!(signature_of(&verifier, &headers(&h).unwrap(), body));
        // Rotation: the new secret first, the old one (that signed) second, and the other way round.
        let new = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for list in [format!("{new} {SECRET}"), format!("{SECRET}\t{new}")] {
            let verifier = WebhookVerifier::from_list(&list).unwrap();
            assert!(
                signature_of(&verifier, &headers(&h).unwrap(), body),
                "{list}"
            );
        }
    }

    /// With several secrets configured, a request must still carry a `v1` signature of this very
    /// message under one of them: one signed by a secret not in the list, or carrying a signature
    /// that is valid but for another message (another id, time or body) beside a bad entry, is
    /// refused, whatever the list's length and order.
    #[test]
    fn with_several_secrets_a_request_signed_by_none_is_refused() {
        let body = br#"{"test": 2432232314}"#;
        let ts = 1614265330;
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let third = "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
        let stranger =
            WebhookVerifier::from_list("whsec_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC").unwrap();
        let forged = stranger.sign(ID, ts, body);
        let lists = [
            format!("{SECRET} {other}"),
            format!("{other} {SECRET}"),
            format!("{other} {third} {SECRET}"),
            format!("{third} {SECRET} {other}"),
        ];
        for list in &lists {
            let verifier = WebhookVerifier::from_list(list).unwrap();
            let signer = WebhookVerifier::from_list(SECRET).unwrap();
            // Valid signatures of other messages under a configured secret.
            let other_id = signer.sign("msg_other", ts, body);
            let other_time = signer.sign(ID, ts + 1, body);
            let other_body = signer.sign(ID, ts, br#"{"test": 2432232315}"#);
            for header in [
                forged.clone(),
                format!("v1,AAAA {other_id}"),
                format!("{forged} {other_time}"),
                format!("v1,bm9wZQ== {other_body} v2,{}", &SIGNATURE[3..]),
            ] {
                let h = [
                    ("svix-id", ID),
                    ("svix-timestamp", TIMESTAMP),
                    ("svix-signature", header.as_str()),
                ];
                let h = headers(&h).unwrap();
                assert!(!signature_of(&verifier, &h, body), "{list}: {header}");
                assert_eq!(
                    verifier.verify_at(&h, body, at(1614265330)).unwrap_err(),
                    WebhookError::NoValidSignature,
                    "{list}: {header}"
                );
            }
            // The genuine signature beside the same bad entries is accepted.
            let good = format!("v1,AAAA {other_id} {SIGNATURE}");
            let h = [
                ("svix-id", ID),
                ("svix-timestamp", TIMESTAMP),
                ("svix-signature", good.as_str()),
            ];
            assert!(
                signature_of(&verifier, &headers(&h).unwrap(), body),
                "{list}"
            );
        }
    }

    /// Every entry up to the header's size limit is read: a valid `v1` entry after any number of
    /// entries of other versions (or bad ones) is accepted; a header over 8 KiB is refused whole.
    #[test]
    fn a_valid_signature_after_any_number_of_others_is_found() {
        let body = br#"{"test": 2432232314}"#;
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let at_spec_time = at(1614265330);
        for others in [16, 17, 100, 150] {
            let header = format!("{}{SIGNATURE}", "v1a,bm9wZQ== ".repeat(others));
            assert!(header.len() <= MAX_SIGNATURE_HEADER_BYTES);
            let h = [
                ("webhook-id", ID),
                ("webhook-timestamp", TIMESTAMP),
                ("webhook-signature", header.as_str()),
            ];
            let h = headers(&h).unwrap();
            assert!(signature_of(&verifier, &h, body), "{others} others first");
            assert_eq!(verifier.check_headers(&h, at_spec_time), Ok(1614265330));
        }
        let header = format!(
            "{}{SIGNATURE}",
            "v1,bm9wZQ== ".repeat(MAX_SIGNATURE_HEADER_BYTES / 12)
        );
        assert!(header.len() > MAX_SIGNATURE_HEADER_BYTES);
        let h = [
            ("webhook-id", ID),
            ("webhook-timestamp", TIMESTAMP),
            ("webhook-signature", header.as_str()),
        ];
        let err = verifier
            .verify_at(&headers(&h).unwrap(), body, at_spec_time)
            .unwrap_err();
        assert!(
            matches!(
                err,
                WebhookError::BadHeader {
                    name: "webhook-signature",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_unauthenticated());
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let ok = [
            ("svix-id", ID),
            ("svix-timestamp", TIMESTAMP),
            ("svix-signature", SIGNATURE),
        ];
        let h = headers(&ok).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let t = 1614265330;
        let not_time = |r: Result<VerifiedEvent, WebhookError>| {
            matches!(r, Err(WebhookError::NotClerkEvent { .. }))
        };
        assert!(not_time(verifier.verify_at(&h, body, at(t + 300))));
        assert!(not_time(verifier.verify_at(&h, body, at(t - 300))));
        assert_eq!(
            verifier.verify_at(&h, body, at(t + 301)).unwrap_err(),
            WebhookError::TimestampTooOld {
                age_secs: 301,
                tolerance_secs: 300
            }
        );
        assert_eq!(
            verifier.verify_at(&h, body, at(t - 301)).unwrap_err(),
            WebhookError::TimestampTooNew {
                ahead_secs: 301,
                tolerance_secs: 300
            }
        );
        let strict = verifier.clone().with_tolerance(Duration::from_secs(10));
        assert!(matches!(
            strict.verify_at(&h, body, at(t + 11)),
            Err(WebhookError::TimestampTooOld { .. })
        ));
        // Today, the example is a replay.
        assert!(matches!(
            verifier.verify(&h, body),
            Err(WebhookError::TimestampTooOld { .. })
        ));
        for bad in [
            "",
            "-1614265330",
            "+1614265330",
            "1614265330.5",
            " 1614265330",
            "1e9",
            "9999999999999",
        ] {
            let h = [
                ("svix-id", ID),
                ("svix-timestamp", bad),
                ("svix-signature", SIGNATURE),
            ];
            assert_eq!(
                verifier
                    .verify_at(&headers(&h).unwrap(), body, at(t))
                    .unwrap_err(),
                WebhookError::BadHeader {
                    name: "svix-timestamp",
                    reason: "not whole seconds since the epoch"
                },
                "{bad:?}"
            );
        }
        // Twelve digits are still a timestamp (refused for its distance, not its form).
        let h = [
            ("svix-id", ID),
            ("svix-timestamp", "999999999999"),
            ("svix-signature", SIGNATURE),
        ];
        assert!(matches!(
            verifier.verify_at(&headers(&h).unwrap(), body, at(t)),
            Err(WebhookError::TimestampTooNew { .. })
        ));
    }

    #[test]
    fn headers_come_in_one_spelling_and_all_three_are_needed() {
        assert_eq!(
            headers(&[("svix-id", ID), ("svix-timestamp", TIMESTAMP)]).unwrap_err(),
            WebhookError::MissingHeader {
                name: "webhook-signature"
            }
        );
        assert_eq!(
            headers(&[]).unwrap_err(),
            WebhookError::MissingHeader { name: "webhook-id" }
        );
        // webhook-id present: the svix-* timestamp and signature are not mixed in.
        assert_eq!(
            headers(&[
                ("webhook-id", ID),
                ("svix-timestamp", TIMESTAMP),
                ("svix-signature", SIGNATURE)
            ])
            .unwrap_err(),
            WebhookError::MissingHeader {
                name: "webhook-timestamp"
            }
        );
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let long = "m".repeat(257);
        for id in ["", long.as_str()] {
            let h = [
                ("svix-id", id),
                ("svix-timestamp", TIMESTAMP),
                ("svix-signature", SIGNATURE),
            ];
            assert!(matches!(
                verifier.verify_at(&headers(&h).unwrap(), b"{}", at(1614265330)),
                Err(WebhookError::BadHeader {
                    name: "svix-id",
                    ..
                })
            ));
        }
    }

    #[test]
    fn the_body_is_bounded_before_anything_else() {
        let verifier = WebhookVerifier::from_list(SECRET)
            .unwrap()
            .with_max_body_bytes(10);
        let h = [
            ("svix-id", ""),
            ("svix-timestamp", "x"),
            ("svix-signature", ""),
        ];
        assert_eq!(
            verifier
                .verify_at(&headers(&h).unwrap(), &[b'x'; 11], at(0))
                .unwrap_err(),
            WebhookError::BodyTooLarge { len: 11, limit: 10 }
        );
        assert_eq!(
            WebhookVerifier::from_list(SECRET).unwrap().max_body_bytes(),
            1024 * 1024
        );
    }

    /// Each size limit admits a value of exactly its size and refuses one byte more: the message
    /// id (256 bytes), the signature header (8 KiB) and the body (`max_body_bytes`).
    #[test]
    fn each_limit_admits_exactly_its_size() {
        let verifier = WebhookVerifier::from_list(SECRET)
            .unwrap()
            .with_max_body_bytes(10);
        let now = at(1614265330);
        let body = br#"{"a":1234}"#;
        assert_eq!(body.len(), 10);
        for (len, admitted) in [(MAX_ID_BYTES, true), (MAX_ID_BYTES + 1, false)] {
            let id = "m".repeat(len);
            let signature = verifier.sign(&id, 1614265330, body);
            let h = [
                ("webhook-id", id.as_str()),
                ("webhook-timestamp", TIMESTAMP),
                ("webhook-signature", signature.as_str()),
            ];
            let h = headers(&h).unwrap();
            let err = verifier.verify_at(&h, body, now).unwrap_err();
            let refused = matches!(
                err,
                WebhookError::BadHeader {
                    name: "webhook-id",
                    ..
                }
            );
            assert_eq!(!refused, admitted, "an id of {len} bytes: {err:?}");
            if admitted {
                // Signature and time pass: the body is not a Clerk event.
                assert!(matches!(err, WebhookError::NotClerkEvent { .. }), "{err:?}");
            }
        }
        for (len, admitted) in [
            (MAX_SIGNATURE_HEADER_BYTES, true),
            (MAX_SIGNATURE_HEADER_BYTES + 1, false),
        ] {
            // Padding of another version first, then the valid entry: exactly `len` bytes.
            let pad = len - SIGNATURE.len() - "v1a, ".len();
            let header = format!("v1a,{} {SIGNATURE}", "A".repeat(pad));
            assert_eq!(header.len(), len);
            let h = [
                ("webhook-id", ID),
                ("webhook-timestamp", TIMESTAMP),
                ("webhook-signature", header.as_str()),
            ];
            let result = verifier.check_headers(&headers(&h).unwrap(), now);
            assert_eq!(
                result.is_ok(),
                admitted,
                "a header of {len} bytes: {result:?}"
            );
        }
        let h = [
            ("webhook-id", ID),
            ("webhook-timestamp", TIMESTAMP),
            ("webhook-signature", SIGNATURE),
        ];
        let h = headers(&h).unwrap();
        // A body of exactly the limit reaches the signature check (which it fails: signed for
        // another body); one byte more is refused for its size.
        assert_eq!(
            verifier.verify_at(&h, body, now).unwrap_err(),
            WebhookError::NoValidSignature
        );
        assert!(matches!(
            verifier.verify_at(&h, br#"{"a":12345}"#, now).unwrap_err(),
            WebhookError::BodyTooLarge { len: 11, limit: 10 }
        ));
    }

    /// Logs name a message by its id: `id()` gives it, and `Debug` shows it (and the timestamp)
    /// but never the signatures.
    #[test]
    fn headers_show_the_id_and_hide_the_signatures() {
        let h = [
            ("svix-id", ID),
            ("svix-timestamp", TIMESTAMP),
            ("svix-signature", SIGNATURE),
        ];
        let h = headers(&h).unwrap();
        assert_eq!(h.id(), ID);
        let shown = format!("{h:?}");
        assert!(shown.starts_with("WebhookHeaders"), "{shown}");
        assert!(shown.contains(ID) && shown.contains(TIMESTAMP), "{shown}");
        assert!(!shown.contains("g0hM9SsE"), "{shown}");
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        let cases = [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "does not start with whsec_",
            ),
            (
                "whsec_not*base64*at*all*but*long*enough",
                "the part after whsec_ is not base64",
            ),
            ("whsec_c2hvcnQ=", "the key is shorter than 24 bytes"),
            ("whsec_", "the key is shorter than 24 bytes"),
        ];
        for (secret, reason) in cases {
            let err = WebhookVerifier::new([SECRET, secret]).unwrap_err();
            assert_eq!(
                err,
                WebhookError::BadSecret {
                    position: 2,
                    reason
                }
            );
            let shown = format!("{err} {err:?}");
            if secret.len() > "whsec_".len() {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(
            WebhookVerifier::from_list("  ").unwrap_err(),
            WebhookError::NoSecret
        );
        let verifier = WebhookVerifier::from_list(SECRET).unwrap();
        let shown = format!("{verifier:?}");
        assert!(
            !shown.contains("MfKQ") && shown.contains("secrets: 1"),
            "{shown}"
        );
    }

    #[test]
    fn errors_about_the_body_show_none_of_it() {
        for body in [
            &br#"{"type": "user.created", "data": {}, "timestamp": "SECRET-VALUE"}"#[..],
            br#"{"type": ["SECRET-VALUE"], "data": {}}"#,
            br#"SECRET-VALUE"#,
            br#"{"type": "SECRET-VALUE""#,
        ] {
            let e = serde_json::from_slice::<ClerkEvent>(body).unwrap_err();
            let reason = crate::clerk::payload::describe_json_error(&e);
            assert!(!reason.contains("SECRET"), "{reason}");
        }
    }
}
