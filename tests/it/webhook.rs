//! The Clerk webhook service's routes (src/bin/livermore-clerk-webhooks) over real HTTP, served
//! in-process on an ephemeral port: signed requests sent with an HTTP client, the database checked
//! after each. `webhook_process.rs` runs the program itself (signals, deadlines, logs).
use livermore_db::clerk::WebhookVerifier;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::clerk::{T0, clerk_user, event_body};
use crate::support::webhook::{SECRET, now, signed};

// The program's own routes; what only `main` calls (draining at shutdown) is unused here.
#[path = "../../src/bin/livermore-clerk-webhooks/service.rs"]
#[allow(dead_code)]
mod service;

const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1rZXktb2YtdGhlLXRlc3RzLTMy";
const FORGER: &str = "whsec_Zm9yZ2VyLWtleS1mb3ItdGhlLXRlc3RzLTMyLWJ5dGVz";

struct Service {
    base: String,
    client: reqwest::Client,
}

/// Serves the service's routes on 127.0.0.1:0 with the default settings and these secrets.
async fn serve(pool: &PgPool, secrets: &str) -> Service {
    let verifier = WebhookVerifier::from_list(secrets).expect("secrets");
    let state = service::AppState::new(pool.clone(), verifier, service::Settings::default(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = service::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Service {
        base,
        client: reqwest::Client::new(),
    }
}

impl Service {
    async fn post(
        &self,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/clerk", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("a response");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Delivers `body` as Svix does: signed now with the service's secret.
    async fn deliver(&self, id: &str, body: &str) -> (u16, Value) {
        self.post(&signed(SECRET, id, now(), body), body.to_owned())
            .await
    }
}

/// (is_active, role, email) of the Clerk identity's rows.
async fn rows(pool: &PgPool, sub: &str) -> Vec<(bool, String, String)> {
    sqlx::query_as(
        "SELECT is_active, role, email FROM users
         WHERE identity_provider = 'clerk' AND identity_sub = $1",
    )
    .bind(sub)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn user_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn created_updated_deleted_and_replays(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let sub = "user_http_ada";
    let created = event_body(
        "user.created",
        clerk_user(sub, "ada@example.com", T0, json!({})),
    );
    let (status, body) = service.deliver("msg_1", &created).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("created")),
        "{body}"
    );
    assert_eq!(
        rows(&pool, sub).await,
        [(true, "user".into(), "ada@example.com".into())]
    );

    let updated = event_body(
        "user.updated",
        clerk_user(
            sub,
            "ada@example.org",
            T0 + 1,
            json!({"public_metadata": {"role": "admin"}}),
        ),
    );
    let (status, body) = service.deliver("msg_2", &updated).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("updated")),
        "{body}"
    );
    assert_eq!(
        rows(&pool, sub).await,
        [(true, "admin".into(), "ada@example.org".into())]
    );

    // A replay of the first message (Svix re-signs each attempt): nothing goes back.
    let (status, body) = service.deliver("msg_1", &created).await;
    assert_eq!((status, &body["outcome"]), (200, &json!("stale")), "{body}");
    // The same request byte for byte, again within the tolerance: harmless too.
    let headers = signed(SECRET, "msg_2", now(), &updated);
    for _ in 0..2 {
        let (status, body) = service.post(&headers, updated.clone()).await;
        assert_eq!((status, &body["outcome"]), (200, &json!("stale")), "{body}");
    }

    let deleted = event_body(
        "user.deleted",
        json!({"id": sub, "object": "user", "deleted": true}),
    );
    let (status, body) = service.deliver("msg_3", &deleted).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("deactivated")),
        "{body}"
    );
    let (status, body) = service.deliver("msg_3", &deleted).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("already_deactivated")),
        "{body}"
    );
    // A late update never brings the user back.
    let late = event_body(
        "user.updated",
        clerk_user(sub, "ada@example.org", T0 + 2, json!({})),
    );
    let (status, _) = service.deliver("msg_4", &late).await;
    assert_eq!(status, 200);
    let after = rows(&pool, sub).await;
    assert_eq!(after.len(), 1);
    assert!(!after[0].0, "deactivated: {after:?}");
    // Other event types are acknowledged and ignored.
    let other = event_body("session.created", json!({"id": "sess_1"}));
    let (status, body) = service.deliver("msg_5", &other).await;
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("ignored")),
        "{body}"
    );
}

#[sqlx::test]
async fn refused_requests_write_nothing(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let sub = "user_http_mallory";
    let grab = event_body(
        "user.created",
        clerk_user(
            sub,
            "mallory@example.com",
            T0,
            json!({"public_metadata": {"role": "admin"}}),
        ),
    );
    let t = now();
    // Signed with another secret; no headers; a signature for another body; one header missing.
    let forged = signed(FORGER, "msg_f", t, &grab);
    let (status, body) = service.post(&forged, grab.clone()).await;
    assert_eq!(status, 401, "{body}");
    // An unauthenticated caller learns nothing of why.
    assert_eq!(body, json!({"error": "unauthenticated"}));
    assert_eq!(service.post(&[], grab.clone()).await.0, 401);
    let other_body = signed(SECRET, "msg_f", t, "{}");
    assert_eq!(service.post(&other_body, grab.clone()).await.0, 401);
    let partial = &signed(SECRET, "msg_f", t, &grab)[..2];
    assert_eq!(service.post(partial, grab.clone()).await.0, 401);
    // Correctly signed, but too old or too far ahead: a replay of a captured request.
    // (400 s past the 300 s tolerance: a second boundary passing during the request changes nothing.)
    for timestamp in [t - 400, t - 24 * 3600, t + 400] {
        let (status, body) = service
            .post(&signed(SECRET, "msg_o", timestamp, &grab), grab.clone())
            .await;
        assert_eq!(status, 401, "{timestamp}: {body}");
        assert_eq!(body, json!({"error": "unauthenticated"}), "{timestamp}");
    }
    // Over the 1 MiB limit, signed or not.
    let huge = format!(
        "{{\"type\":\"user.created\",\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024)
    );
    let (status, _) = service
        .post(&signed(SECRET, "msg_h", t, &huge), huge.clone())
        .await;
    assert_eq!(status, 413);
    // Signed, but not a valid Clerk event: a bad field, an impossible value, not JSON, no data.
    for (n, bad) in [
        event_body(
            "user.created",
            clerk_user(
                sub,
                "mallory@example.com",
                T0,
                json!({"updated_at": "yesterday"}),
            ),
        ),
        event_body(
            "user.created",
            clerk_user(sub, "mallory@example.com", i64::MAX, json!({})),
        ),
        event_body(
            "user.created",
            clerk_user(sub, "not an address", T0, json!({})),
        ),
        event_body(
            "user.created",
            clerk_user(
                sub,
                &format!("{}@example.com", "m".repeat(300)),
                T0,
                json!({}),
            ),
        ),
        "not json at all".to_owned(),
        json!({"type": "user.created"}).to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = service.deliver(&format!("msg_b{n}"), &bad).await;
        assert_eq!(status, 400, "case {n}: {body}");
        // The response names what is wrong, not the values sent.
        let text = body.to_string();
        assert!(
            !text.contains("yesterday") && !text.contains("mallory"),
            "case {n}: {text}"
        );
    }
    assert_eq!(rows(&pool, sub).await, []);
    assert_eq!(user_count(&pool).await, 0);
}

/// The body limit admits exactly its size: a valid event padded with spaces to 1 MiB (declared
/// as such) is applied, as a body one byte over is refused above.
#[sqlx::test]
async fn a_body_of_exactly_the_limit_is_applied(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let limit = WebhookVerifier::from_list(SECRET).unwrap().max_body_bytes();
    let mut body = event_body(
        "user.created",
        clerk_user("user_http_exact", "exact@example.com", T0, json!({})),
    );
    body.push_str(&" ".repeat(limit - body.len()));
    assert_eq!(body.len(), limit);
    let (status, response) = service
        .post(&signed(SECRET, "msg_exact", now(), &body), body.clone())
        .await;
    assert_eq!(
        (status, &response["outcome"]),
        (200, &json!("created")),
        "{response}"
    );
}

#[sqlx::test]
async fn rotated_secrets_and_both_header_spellings(pool: PgPool) {
    let service = serve(&pool, &format!("{SECRET} {OLD_SECRET}")).await;
    let body = event_body(
        "user.created",
        clerk_user("user_http_rot", "rot@example.com", T0, json!({})),
    );
    // Signed with the old secret, in the webhook-* spelling, several signatures in the header.
    let t = now();
    let old = WebhookVerifier::from_list(OLD_SECRET)
        .unwrap()
        .sign("msg_r", t, body.as_bytes());
    let forged = WebhookVerifier::from_list(FORGER)
        .unwrap()
        .sign("msg_r", t, body.as_bytes());
    let headers = vec![
        ("webhook-id", "msg_r".to_owned()),
        ("webhook-timestamp", t.to_string()),
        ("webhook-signature", format!("{forged} {old}")),
    ];
    let (status, response) = service.post(&headers, body.clone()).await;
    assert_eq!(
        (status, &response["outcome"]),
        (200, &json!("created")),
        "{response}"
    );
    // Once the old secret is gone from the configuration, its signatures are refused.
    let service = serve(&pool, SECRET).await;
    assert_eq!(service.post(&headers, body.clone()).await.0, 401);
}

/// Svix retries a slow delivery while the first attempt still runs: 50 at once, all acknowledged,
/// one user.
#[sqlx::test]
async fn fifty_concurrent_deliveries_make_one_user(pool: PgPool) {
    let service = std::sync::Arc::new(serve(&pool, SECRET).await);
    let body = event_body(
        "user.created",
        clerk_user("user_http_many", "many@example.com", T0, json!({})),
    );
    for round in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let service = service.clone();
            let body = body.clone();
            tasks.spawn(async move { service.deliver("msg_many", &body).await });
        }
        let mut outcomes = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let (status, response) = result.unwrap();
            assert_eq!(status, 200, "{response}");
            outcomes.push(response["outcome"].as_str().unwrap().to_owned());
        }
        let created = outcomes.iter().filter(|o| *o == "created").count();
        assert_eq!(created, usize::from(round == 0), "{outcomes:?}");
        assert_eq!(rows(&pool, "user_http_many").await.len(), 1);
    }
    assert_eq!(user_count(&pool).await, 1);
}

#[sqlx::test]
async fn database_failures_answer_503_and_health_stays_up(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let health = service
        .client
        .get(format!("{}/healthz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    pool.close().await;
    let body = event_body(
        "user.created",
        clerk_user("user_http_down", "down@example.com", T0, json!({})),
    );
    let (status, response) = service.deliver("msg_d", &body).await;
    assert_eq!(status, 503, "{response}");
}

/// An address held by another user: 409 (Svix retries; a later event may release the address), and
/// nothing written.
#[sqlx::test]
async fn an_address_held_by_another_user_answers_409(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let first = event_body(
        "user.created",
        clerk_user("user_http_first", "shared@example.com", T0, json!({})),
    );
    assert_eq!(service.deliver("msg_s1", &first).await.0, 200);
    let second = event_body(
        "user.created",
        clerk_user("user_http_second", "shared@example.com", T0, json!({})),
    );
    let (status, body) = service.deliver("msg_s2", &second).await;
    assert_eq!(status, 409, "{body}");
    assert!(!body.to_string().contains("shared@"), "{body}");
    assert_eq!(rows(&pool, "user_http_second").await, []);
    assert_eq!(user_count(&pool).await, 1);
}

/// Sends a request head (and then, as long as the service reads, `body` in 64 KiB writes without
/// ever ending it) on a raw connection, and returns the status of the first response within 5 s:
/// `None` when none came (the service waited for the rest of the body).
async fn status_before_the_body_ends(base: &str, head: String, body: Vec<u8>) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            writer.write_all(chunk).await?;
        }
        // Never the end of the body: the connection stays open, waiting.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        Ok::<_, std::io::Error>(writer)
    });
    let mut seen = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !seen.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    sending.abort();
    read.ok()?;
    let line = String::from_utf8_lossy(&seen);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A request whose headers pass the pre-body check (a current timestamp, a signature entry) and
/// that declares a body over the limit is answered 413 before any of its body is sent; a chunked
/// body (no length declared) is refused as soon as it passes the limit, without waiting for its
/// end. Neither is read to the end, nor verified: the service never waits for what it refuses.
#[sqlx::test]
async fn a_body_over_the_limit_is_refused_before_it_is_sent(pool: PgPool) {
    let service = serve(&pool, SECRET).await;
    let limit = livermore_db::clerk::DEFAULT_MAX_BODY_BYTES;
    let head = |framing: String| {
        let mut head = format!(
            "POST /webhooks/clerk HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{framing}\r\n"
        );
        for (name, value) in signed(SECRET, "msg_big", now(), "{}") {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    // Declared: nothing of the body is sent.
    let declared = head(format!("content-length: {}", limit + 1));
    assert_eq!(
        status_before_the_body_ends(&service.base, declared, Vec::new()).await,
        Some(413),
        "a declared length over the limit"
    );
    // Chunked: 64 KiB chunks until past the limit, and never the last chunk.
    let mut chunked = Vec::new();
    let piece = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent <= limit {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
        sent += piece.len();
    }
    let chunked_head = head("transfer-encoding: chunked".to_owned());
    assert_eq!(
        status_before_the_body_ends(&service.base, chunked_head, chunked).await,
        Some(413),
        "a chunked body past the limit"
    );
    assert_eq!(user_count(&pool).await, 0);
}
