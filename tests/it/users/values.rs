//! What is stored: logins, roles, listing and deactivation, and hostile strings kept verbatim or
//! rejected.
use super::*;

#[sqlx::test]
async fn logins_roles_listing_and_deactivation(pool: PgPool) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let email = format!("u{i}@example.com");
        ids.push(
            sign_in(&pool, &profile("clerk", &format!("s{i}"), &email))
                .await
                .unwrap()
                .user
                .id,
        );
    }

    age(&pool, ids[0]).await;
    let logged = record_login(&pool, ids[0]).await.unwrap();
    let login = logged.last_login_at.expect("last_login_at set");
    assert_recent(login, "last_login_at");
    assert_recent(logged.updated_at, "updated_at after a login");

    for &id in &ids[1..4] {
        age(&pool, id).await;
        let u = set_role(&pool, id, Role::SubscriberPro).await.unwrap();
        assert_eq!(u.role, Role::SubscriberPro);
        assert_recent(u.updated_at, "updated_at after set_role");
    }
    let all = list_by_role(&pool, Role::SubscriberPro, None, 100)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), &ids[1..4]);
    let page1 = list_by_role(&pool, Role::SubscriberPro, None, 2)
        .await
        .unwrap();
    let page2 = list_by_role(&pool, Role::SubscriberPro, Some(page1[1].id), 2)
        .await
        .unwrap();
    assert_eq!(
        page1.iter().chain(&page2).map(|u| u.id).collect::<Vec<_>>(),
        &ids[1..4]
    );
    let users = list_by_role(&pool, Role::User, None, 100).await.unwrap();
    assert_eq!(
        users.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ids[0], ids[4]]
    );
    assert!(
        list_by_role(&pool, Role::Admin, None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    age(&pool, ids[4]).await;
    let gone = deactivate(&pool, ids[4]).await.unwrap();
    assert!(!gone.is_active);
    assert_recent(gone.updated_at, "updated_at after deactivate");
    let identity = Identity::parse("clerk", "s4").unwrap();
    let kept = find_by_identity(&pool, &identity)
        .await
        .unwrap()
        .expect("row and identity kept");
    assert!(!kept.is_active);
    // A deactivated user signing in is found, not re-created, and stays inactive.
    let again = sign_in(&pool, &profile("clerk", "s4", "u4@example.com"))
        .await
        .unwrap();
    assert_eq!(
        (again.user.id, again.created, again.user.is_active),
        (ids[4], false, false)
    );
    assert_eq!(user_count(&pool).await, 5);
}

#[sqlx::test]
async fn hostile_strings_are_stored_verbatim_or_rejected(pool: PgPool) {
    let nasty_sub = "'; DROP TABLE users; --";
    let nasty_name = "Robert'); DROP TABLE users;-- \"😀\" \\ %_";
    let email = "o'brien+\"quoted\"@example.com";
    let p = Profile::parse(
        "clerk",
        nasty_sub,
        email,
        Some(nasty_name),
        Some("https://x.example/a?b='c'&d=%00"),
    )
    .unwrap();
    let u = sign_in(&pool, &p).await.unwrap().user;
    assert_eq!(u.identity_sub.as_deref(), Some(nasty_sub));
    assert_eq!(u.display_name.as_deref(), Some(nasty_name));
    assert_eq!(u.email, email);
    assert_eq!(
        u.identity_picture_url.as_deref(),
        Some("https://x.example/a?b='c'&d=%00")
    );
    assert_eq!(u.username, "obrien");
    let found = find_by_identity(&pool, &Identity::parse("clerk", nasty_sub).unwrap())
        .await
        .unwrap();
    assert_eq!(found.map(|f| f.id), Some(u.id));

    // 10 000 characters: a display name is cut to 100, anything else is refused.
    let huge = "😀".repeat(10_000);
    let p = Profile::parse("clerk", "emoji", "emoji@example.com", Some(&huge), None).unwrap();
    let emoji = sign_in(&pool, &p).await.unwrap().user;
    assert_eq!(emoji.display_name.unwrap(), "😀".repeat(100));
    for (field, result) in [
        (
            "subject",
            Profile::parse("clerk", &huge, "a@b.c", None, None),
        ),
        (
            "email",
            Profile::parse("clerk", "s", &format!("{huge}@b.c"), None, None),
        ),
        ("provider", Profile::parse(&huge, "s", "a@b.c", None, None)),
        (
            "picture_url",
            Profile::parse(
                "clerk",
                "s",
                "a@b.c",
                None,
                Some(&format!("https://a/{huge}")),
            ),
        ),
        (
            "subject",
            Profile::parse("clerk", "a\0b", "a@b.c", None, None),
        ),
        ("email", Profile::parse("clerk", "s", "a\0@b.c", None, None)),
        (
            "display_name",
            Profile::parse("clerk", "s", "a@b.c", Some("nul\0"), None),
        ),
        (
            "provider",
            Profile::parse("clerk'; --", "s", "a@b.c", None, None),
        ),
    ] {
        match result {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidInput for {field}, got {other:?}"),
        }
    }

    // The table is intact.
    assert_eq!(user_count(&pool).await, 2);
    let columns = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM information_schema.columns WHERE table_name = 'users'"#
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(columns, 17);
}
