//! Logout, logout-all, listing and revoking sessions, disabling users.

use taskgate_proto::auth::v1::{
    DisableUserRequest, GetMeRequest, ListSessionsRequest, LoginRequest, LogoutAllRequest, LogoutRequest,
    RefreshRequest, RevokeSessionRequest, TokenPair,
};
use tonic::{Code, Request, Status};

use crate::helpers::{PASSWORD, TestApp, bearer, jwt_claims, spawn_app, spawn_app_with, username};

async fn get_me(app: &TestApp, access_token: &str) -> Result<(), Status> {
    app.client.clone().get_me(bearer(GetMeRequest {}, access_token)).await.map(|_| ())
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Result<TokenPair, Status> {
    app.client
        .clone()
        .refresh(RefreshRequest { refresh_token: refresh_token.into() })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn assert_session_dead(app: &TestApp, tokens: &TokenPair) {
    let status = get_me(app, &tokens.access_token).await.expect_err("access token still works");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = refresh(app, &tokens.refresh_token).await.expect_err("refresh token still works");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn the_access_token_is_rejected_right_after_logout_with_the_refresh_token() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    get_me(&app, &tokens.access_token).await.expect("works before logout");
    app.client.clone().logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() }).await.expect("logout");
    assert_session_dead(&app, &tokens).await;
}

#[tokio::test]
async fn logout_with_only_the_bearer_token_ends_that_session() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let one = app.login(&name).await;
    let other = app.login(&name).await;
    app.client.clone().logout(bearer(LogoutRequest::default(), &one.access_token)).await.expect("logout");
    assert_session_dead(&app, &one).await;
    get_me(&app, &other.access_token).await.expect("the other session lives on");
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_user() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let sessions = [app.login(&name).await, app.login(&name).await, app.login(&name).await];
    let (_, bystander) = app.user_with_session().await;
    let revoked = app
        .client
        .clone()
        .logout_all(bearer(LogoutAllRequest {}, &sessions[0].access_token))
        .await
        .expect("logout all")
        .into_inner()
        .revoked_sessions;
    assert_eq!(revoked, 3);
    for tokens in &sessions {
        assert_session_dead(&app, tokens).await;
    }
    get_me(&app, &bystander.access_token).await.expect("other users keep their sessions");
}

#[tokio::test]
async fn list_sessions_shows_each_session_with_its_agent_address_and_current_flag() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let mut request =
        Request::new(LoginRequest { login: name.clone(), password: PASSWORD.into(), ..Default::default() });
    request.metadata_mut().insert("user-agent", "phone-app/1.0".parse().expect("ascii"));
    request.metadata_mut().insert("x-client-ip", "203.0.113.7".parse().expect("ascii"));
    let phone = app.client.clone().login(request).await.expect("login").into_inner().tokens.expect("tokens");
    let laptop = app.login(&name).await;
    refresh(&app, &phone.refresh_token).await.expect("refresh");

    let sessions = app
        .client
        .clone()
        .list_sessions(bearer(ListSessionsRequest {}, &laptop.access_token))
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2);
    let phone_sid = jwt_claims(&phone.access_token)["sid"].as_str().expect("sid").to_owned();
    let laptop_sid = jwt_claims(&laptop.access_token)["sid"].as_str().expect("sid").to_owned();
    let phone_session = sessions.iter().find(|s| s.id == phone_sid).expect("phone session listed");
    let laptop_session = sessions.iter().find(|s| s.id == laptop_sid).expect("laptop session listed");
    assert!(phone_session.user_agent().contains("phone-app/1.0"), "{:?}", phone_session.user_agent);
    assert_eq!(phone_session.ip_address(), "203.0.113.7");
    assert!(phone_session.last_refreshed_at.is_some());
    assert!(!phone_session.current);
    assert_eq!(laptop_session.ip_address(), "127.0.0.1");
    assert!(laptop_session.last_refreshed_at.is_none());
    assert!(laptop_session.current);
    assert!(laptop_session.created_at.is_some() && laptop_session.expires_at.is_some());
}

#[tokio::test]
async fn revoke_session_ends_one_of_the_callers_sessions() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let keep = app.login(&name).await;
    let end = app.login(&name).await;
    let sid = jwt_claims(&end.access_token)["sid"].as_str().expect("sid").to_owned();
    app.client
        .clone()
        .revoke_session(bearer(RevokeSessionRequest { id: sid }, &keep.access_token))
        .await
        .expect("revoke");
    assert_session_dead(&app, &end).await;
    get_me(&app, &keep.access_token).await.expect("the caller's session lives on");
}

#[tokio::test]
async fn revoking_someone_elses_session_is_not_found_and_leaves_it_alone() {
    let app = spawn_app().await;
    let (_, mine) = app.user_with_session().await;
    let (_, theirs) = app.user_with_session().await;
    let their_sid = jwt_claims(&theirs.access_token)["sid"].as_str().expect("sid").to_owned();
    let status = app
        .client
        .clone()
        .revoke_session(bearer(RevokeSessionRequest { id: their_sid }, &mine.access_token))
        .await
        .expect_err("revoked another user's session");
    assert_eq!(status.code(), Code::NotFound);
    let status = app
        .client
        .clone()
        .revoke_session(bearer(RevokeSessionRequest { id: uuid::Uuid::new_v4().to_string() }, &mine.access_token))
        .await
        .expect_err("revoked a session that does not exist");
    assert_eq!(status.code(), Code::NotFound);
    get_me(&app, &theirs.access_token).await.expect("their session lives on");
}

#[tokio::test]
async fn an_admin_disabling_a_user_ends_all_their_sessions_and_logins() {
    let admin_name = username();
    let admin_password = "an admin passphrase 42";
    let app = spawn_app_with(|s| {
        s.admin_username = Some(admin_name.clone());
        s.admin_password = Some(admin_password.into());
    })
    .await;
    let admin = app
        .client
        .clone()
        .login(LoginRequest { login: admin_name, password: admin_password.into(), ..Default::default() })
        .await
        .expect("bootstrapped admin logs in")
        .into_inner()
        .tokens
        .expect("tokens");
    let name = username();
    let user = app.register(&name).await;
    let sessions = [app.login(&name).await, app.login(&name).await];

    let disabled = app
        .client
        .clone()
        .disable_user(bearer(DisableUserRequest { id: user.id.clone() }, &admin.access_token))
        .await
        .expect("disable")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(disabled.id, user.id);
    for tokens in &sessions {
        assert_session_dead(&app, tokens).await;
    }
    let status = app
        .client
        .clone()
        .login(LoginRequest { login: name, password: PASSWORD.into(), ..Default::default() })
        .await
        .expect_err("disabled user logged in");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_non_admin_cannot_disable_users() {
    let app = spawn_app().await;
    let (_, caller) = app.user_with_session().await;
    let (victim, victim_tokens) = app.user_with_session().await;
    let status = app
        .client
        .clone()
        .disable_user(bearer(DisableUserRequest { id: victim.id }, &caller.access_token))
        .await
        .expect_err("non-admin disabled a user");
    assert_eq!(status.code(), Code::PermissionDenied);
    get_me(&app, &victim_tokens.access_token).await.expect("victim unaffected");
}

#[tokio::test]
async fn every_redis_key_has_a_ttl_and_no_token_is_stored() {
    use fred::{interfaces::LuaInterface as _, types::MultipleKeys};

    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let one = app.login(&name).await;
    let two = app.login(&name).await;
    refresh(&app, &one.refresh_token).await.expect("refresh");
    app.client.clone().logout(LogoutRequest { refresh_token: two.refresh_token.clone() }).await.expect("logout");
    app.client
        .clone()
        .login(LoginRequest { login: name.clone(), password: "not the password".into(), ..Default::default() })
        .await
        .expect_err("wrong password");

    let redis = taskgate_common::redis::connect(&taskgate_test_support::redis_url(), 1).await.expect("redis");
    let lua = r#"
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local t = redis.call('TYPE', k)['ok']
  local values = ''
  if t == 'hash' then values = table.concat(redis.call('HVALS', k), ' ')
  elseif t == 'string' then values = redis.call('GET', k) end
  table.insert(out, k)
  table.insert(out, tostring(redis.call('TTL', k)))
  table.insert(out, values)
end
return out
"#;
    let no_keys: MultipleKeys = std::iter::empty::<&str>().collect();
    let prefix = app.settings.redis_prefix.clone();
    let found: Vec<String> = redis.eval(lua, no_keys, vec![format!("{prefix}*")]).await.expect("scan keys");
    let mut kinds = std::collections::BTreeSet::new();
    for entry in found.chunks_exact(3) {
        let (key, ttl, values) = (&entry[0], &entry[1], &entry[2]);
        let ttl: i64 = ttl.parse().expect("ttl");
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
        for token in [&one.access_token, &one.refresh_token, &two.access_token, &two.refresh_token] {
            let signature = token.rsplit('.').next().expect("signature");
            assert!(!values.contains(signature) && !key.contains(signature), "{key} holds a token");
        }
        assert!(!values.contains("eyJ"), "{key} holds something JWT-like");
        // `{prefix}{tag}:kind:...` (docs/redis-keys.md) or `{prefix}kind:...`.
        let rest = key.trim_start_matches(prefix.as_str());
        let rest = rest.split_once("}:").map_or(rest, |(_, r)| r);
        let kind = rest.split(':').next().unwrap_or_default().to_owned();
        kinds.insert(kind);
    }
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    assert_eq!(kinds, ["ended", "register", "sess", "sessions", "throttle"]);
}

/// The session's durable row: current and previous refresh jti, and when and
/// why it ended.
async fn session_row(app: &TestApp, sid: &str) -> (String, Option<String>, Option<String>) {
    sqlx::query_as("SELECT current_jti, previous_jti, revoked_reason FROM sessions WHERE id = $1::uuid")
        .bind(sid)
        .fetch_one(&app.db)
        .await
        .expect("the session's row")
}

#[tokio::test]
async fn every_rotation_and_every_end_is_in_postgres_before_the_caller_hears_of_it() {
    let app = spawn_app().await;
    let (_, first) = app.user_with_session().await;
    let claims = jwt_claims(&first.refresh_token);
    let sid = claims["sid"].as_str().expect("sid").to_owned();
    assert_eq!(session_row(&app, &sid).await, (claims["jti"].as_str().expect("jti").to_owned(), None, None));

    let second = refresh(&app, &first.refresh_token).await.expect("rotation");
    let (current, previous, ended) = session_row(&app, &sid).await;
    assert_eq!(current, jwt_claims(&second.refresh_token)["jti"].as_str().expect("jti"));
    assert_eq!(previous.as_deref(), claims["jti"].as_str());
    assert_eq!(ended, None);

    // Reuse of a token two rotations old ends the family, for good.
    let third = refresh(&app, &second.refresh_token).await.expect("second rotation");
    refresh(&app, &first.refresh_token).await.expect_err("reuse");
    assert_eq!(session_row(&app, &sid).await.2.as_deref(), Some("refresh_reuse"));
    assert_session_dead(&app, &third).await;

    // A logout is recorded with its reason; a second one changes nothing.
    let (_, other) = app.user_with_session().await;
    let other_sid = jwt_claims(&other.refresh_token)["sid"].as_str().expect("sid").to_owned();
    for _ in 0..2 {
        app.client.clone().logout(LogoutRequest { refresh_token: other.refresh_token.clone() }).await.expect("logout");
    }
    assert_eq!(session_row(&app, &other_sid).await.2.as_deref(), Some("logout"));
}
