use super::*;
use store::SqliteStore;

const PASSWORD: &str = "correct horse battery";

async fn fixture() -> (tempfile::TempDir, Identity) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).await.expect("store");
    let secrets = secrets::Secrets::open(dir.path(), &secrets::SecretsConfig::default())
        .await
        .expect("secrets");
    let identity = Identity::new(Arc::new(store), IdentityConfig::default(), secrets)
        .await
        .expect("id");
    (dir, identity)
}

fn client() -> ClientInfo {
    ClientInfo::new(Some("127.0.0.1".parse().expect("ip")), Some("tests"))
}

async fn user(id: &Identity, email: &str, role: Role, customer: Option<&str>) -> User {
    id.create_user(UserSpec {
        email: email.into(),
        password: PASSWORD.into(),
        role,
        customer: customer.map(str::to_owned),
        display_name: None,
    })
    .await
    .expect("create user")
}

#[tokio::test]
async fn login_fails_the_same_way_for_unknown_user_and_wrong_password() {
    let (_d, id) = fixture().await;
    user(&id, "Admin@Example.com", Role::Admin, None).await;
    let wrong = id
        .login(
            "admin@example.com",
            "wrong password!!".into(),
            None,
            &client(),
        )
        .await;
    let unknown = id
        .login("nobody@example.com", PASSWORD.into(), None, &client())
        .await;
    assert_eq!(
        wrong.err().map(|e| e.to_string()),
        unknown.err().map(|e| e.to_string())
    );
    let (user, pair) = id
        .login("ADMIN@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login");
    assert_eq!(user.email, "admin@example.com");
    let who = id.authenticate(&pair.access_token).await.expect("auth");
    assert_eq!(who.user_id, user.id);
    assert_eq!(who.method, AuthMethod::Bearer);
}

#[tokio::test]
async fn five_failures_lock_known_and_unknown_accounts_alike() {
    let (_d, id) = fixture().await;
    user(&id, "a@example.com", Role::Admin, None).await;
    for email in ["a@example.com", "ghost@example.com"] {
        for _ in 0..5 {
            let e = id
                .login(email, "not the password".into(), None, &client())
                .await;
            assert!(matches!(e, Err(IdentityError::BadCredentials)), "{email}");
        }
        let locked = id.login(email, PASSWORD.into(), None, &client()).await;
        match locked {
            Err(IdentityError::Locked { retry_after }) => {
                assert!(retry_after > 14 * 60 && retry_after <= 15 * 60)
            }
            other => panic!("{email}: expected a lock, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn reusing_a_refresh_token_ends_the_session() {
    let (_d, id) = fixture().await;
    user(&id, "a@example.com", Role::Admin, None).await;
    let (_, first) = id
        .login("a@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login");
    let second = id
        .refresh(&first.refresh_token, &client())
        .await
        .expect("refresh");
    assert!(id.authenticate(&second.access_token).await.is_ok());
    assert!(matches!(
        id.refresh(&first.refresh_token, &client()).await,
        Err(IdentityError::BadToken)
    ));
    // The second pair came before the reuse but is in the same session:
    // it is dead too.
    assert!(id.authenticate(&second.access_token).await.is_err());
    assert!(id.refresh(&second.refresh_token, &client()).await.is_err());
}

#[tokio::test]
async fn logout_and_disabling_end_access_at_once() {
    let (_d, id) = fixture().await;
    let u = user(&id, "a@example.com", Role::Developer, Some("acme")).await;
    let (_, pair) = id
        .login("a@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login");
    let who = id.authenticate(&pair.access_token).await.expect("auth");
    id.logout(&who).await.expect("logout");
    assert!(id.authenticate(&pair.access_token).await.is_err());

    let (_, pair) = id
        .login("a@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login again");
    id.update_user(
        u.id,
        None,
        None,
        UserChange {
            disabled: Some(true),
            ..UserChange::default()
        },
    )
    .await
    .expect("disable");
    assert!(id.authenticate(&pair.access_token).await.is_err());
    assert!(matches!(
        id.login("a@example.com", PASSWORD.into(), None, &client())
            .await,
        Err(IdentityError::BadCredentials)
    ));
}

#[tokio::test]
async fn an_api_key_never_exceeds_its_creator() {
    let (_d, id) = fixture().await;
    user(&id, "dev@example.com", Role::Developer, Some("acme")).await;
    let (_, pair) = id
        .login("dev@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login");
    let dev = id.authenticate(&pair.access_token).await.expect("auth");
    let too_wide = id
        .create_api_key(
            &dev,
            NewApiKey {
                name: "ci".into(),
                permissions: vec!["sites:read".into(), "users:manage".into()],
                sites: None,
                ttl: Duration::from_secs(86_400),
            },
        )
        .await;
    assert!(matches!(too_wide, Err(IdentityError::Escalation(_))));

    let grant = id
        .create_api_key(
            &dev,
            NewApiKey {
                name: "ci".into(),
                permissions: vec!["sites:read".into()],
                sites: Some(vec!["a.example.com".into()]),
                ttl: Duration::from_secs(86_400),
            },
        )
        .await
        .expect("key");
    assert!(grant.key.starts_with(API_KEY_PREFIX));
    let via_key = id.authenticate(&grant.key).await.expect("key auth");
    assert_eq!(via_key.method, AuthMethod::ApiKey);
    assert!(via_key.permissions.contains(Permission::SitesRead));
    assert!(!via_key.permissions.contains(Permission::SitesDelete));
    // A key cannot mint a wider key, nor one for other sites.
    let wider = id
        .create_api_key(
            &via_key,
            NewApiKey {
                name: "x".into(),
                permissions: vec!["sites:read".into()],
                sites: None,
                ttl: Duration::from_secs(86_400),
            },
        )
        .await;
    assert!(matches!(wider, Err(IdentityError::Escalation(_))));

    id.revoke_api_key(&grant.record.id).await.expect("revoke");
    assert!(id.authenticate(&grant.key).await.is_err());
}

#[tokio::test]
async fn rotating_the_signing_key_keeps_old_tokens_valid() {
    let (_d, id) = fixture().await;
    user(&id, "a@example.com", Role::Admin, None).await;
    let (_, before) = id
        .login("a@example.com", PASSWORD.into(), None, &client())
        .await
        .expect("login");
    id.rotate_signing_key().await.expect("rotate");
    assert_eq!(id.jwks()["keys"].as_array().map(Vec::len), Some(2));
    assert!(id.authenticate(&before.access_token).await.is_ok());
    let after = id
        .refresh(&before.refresh_token, &client())
        .await
        .expect("refresh");
    assert!(id.authenticate(&after.access_token).await.is_ok());
}

#[test]
fn emails_are_checked_and_lower_cased() {
    assert_eq!(normalize_email(" A@B.io ").expect("ok"), "a@b.io");
    for bad in [
        "", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io", "a@b.io.",
    ] {
        assert!(normalize_email(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn csrf_tokens_belong_to_their_cookie() {
    let a = csrf_token_for("sfc_one");
    assert_eq!(a, csrf_token_for("sfc_one"));
    assert_ne!(a, csrf_token_for("sfc_two"));
}
