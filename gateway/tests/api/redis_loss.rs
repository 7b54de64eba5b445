//! Redis losing its data (FLUSHALL, or a restart without persistence) neither
//! revives an ended session nor logs anyone out: the verifiers check an
//! allow-list of live sessions that the auth service rebuilds from Postgres.
//!
//! Each test runs the whole stack on a private Redis, ends sessions the three
//! ways a session ends (logout, refresh-token reuse, an admin disabling the
//! user), loses Redis's data, and then checks, over and over until well past
//! the rebuild, that every ended session's access token is refused by the
//! gateway, by the task service directly and by the auth service, while a
//! live session refreshes at once and its access token works again within
//! [`REBUILT_WITHIN`].

use std::time::{Duration, Instant};

use fred::prelude::*;
use taskgate_proto::{
    auth::v1::{DisableUserRequest, GetMeRequest, LoginRequest, LogoutRequest, RefreshRequest, TokenPair},
    task::v1::ListTasksRequest,
};
use taskgate_test_support::PrivateRedis;
use tonic::Code;

use crate::helpers::{StackOptions, TestStack, TestUser, bearer, redis_client, spawn_stack_with};

/// The bootstrap admin of these stacks (each has a fresh database).
const ADMIN: &str = "loss_admin";
/// Its password.
const ADMIN_PASSWORD: &str = "a long admin passphrase 42";
/// How soon after the loss a live session's access token works again (the
/// auth service checks the mirror every second, then rebuilds it).
const REBUILT_WITHIN: Duration = Duration::from_secs(5);
/// How long after the loss the ended tokens keep being tried.
const WATCH_FOR: Duration = Duration::from_secs(4);

/// The ways Redis loses its data.
#[derive(Debug, Clone, Copy)]
enum Loss {
    Flushall,
    RestartEmpty,
}

fn with_admin(settings: &mut auth_service::Settings) {
    settings.admin_username = Some(ADMIN.into());
    settings.admin_password = Some(ADMIN_PASSWORD.into());
}

async fn refresh(stack: &TestStack, refresh_token: &str) -> Result<TokenPair, tonic::Status> {
    let reply = stack.auth_a.clone().refresh(RefreshRequest { refresh_token: refresh_token.into() }).await?;
    Ok(reply.into_inner().tokens.expect("tokens"))
}

/// How the three verifiers answer `access`: the gateway (gRPC), the task
/// service called directly, and the auth service's GetMe through the gateway.
async fn answers(stack: &TestStack, access: &str) -> [Result<(), Code>; 3] {
    let gateway = stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), access)).await;
    let direct = stack.task_direct().list_tasks(bearer(ListTasksRequest::default(), access)).await;
    let auth = stack.auth_b.clone().get_me(bearer(GetMeRequest {}, access)).await;
    [gateway.map(drop), direct.map(drop), auth.map(drop)].map(|r| r.map_err(|s| s.code()))
}

/// Connected clients on the private Redis (the probe's own included).
async fn connected_clients(url: &str) -> usize {
    let client = redis_client(url).await;
    let info: String = client.info(Some(fred::types::InfoKind::Clients)).await.expect("INFO clients");
    let _ = client.quit().await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients")
}

async fn ended_sessions_stay_dead_and_live_ones_come_back(loss: Loss) {
    let mut redis = PrivateRedis::start();
    let stack =
        spawn_stack_with(StackOptions { redis_url: Some(redis.url()), auth: with_admin, ..Default::default() }).await;
    let admin = stack
        .auth_a
        .clone()
        .login(LoginRequest { login: ADMIN.into(), password: ADMIN_PASSWORD.into(), ..Default::default() })
        .await
        .expect("admin login")
        .into_inner()
        .tokens
        .expect("tokens");

    // Ended by logout.
    let logged_out = stack.user().await;
    stack.auth_a.clone().logout(bearer(LogoutRequest::default(), logged_out.access())).await.expect("logout");
    // Ended by reuse detection: rotate twice, then present the first token.
    let stolen = stack.user().await;
    let second = refresh(&stack, &stolen.tokens.refresh_token).await.expect("first rotation");
    let third = refresh(&stack, &second.refresh_token).await.expect("second rotation");
    let reuse = refresh(&stack, &stolen.tokens.refresh_token).await.expect_err("reuse");
    assert_eq!(reuse.code(), Code::Unauthenticated);
    // Ended by an admin disabling the user.
    let disabled = stack.user().await;
    stack
        .auth_a
        .clone()
        .disable_user(bearer(DisableUserRequest { id: disabled.user.id.clone() }, &admin.access_token))
        .await
        .expect("disable");
    // Live, and kept live: one refreshes right after the loss, the other
    // does nothing and waits for the mirror's rebuild.
    let live: TestUser = stack.user().await;
    let idle: TestUser = stack.user().await;
    let dead = [
        ("logged out", logged_out.tokens.access_token.clone()),
        ("reuse detected", third.access_token.clone()),
        ("user disabled", disabled.tokens.access_token.clone()),
    ];
    for (what, access) in &dead {
        assert!(answers(&stack, access).await.iter().all(|a| *a == Err(Code::Unauthenticated)), "{what} before");
    }
    assert_eq!(answers(&stack, live.access()).await, [Ok(()), Ok(()), Ok(())]);

    let clients_before = connected_clients(&redis.url()).await;
    match loss {
        Loss::Flushall => {
            let client = redis_client(&redis.url()).await;
            let _: () = client.flushall(false).await.expect("FLUSHALL");
            let _ = client.quit().await;
        }
        Loss::RestartEmpty => {
            redis.stop();
            redis.restart();
            // While a service's Redis client is disconnected, it takes the
            // documented outage path (fail-open with the local limiter); the
            // data loss is what is tested here, from the moment every
            // service is connected to the empty Redis again.
            let deadline = Instant::now() + Duration::from_secs(15);
            while connected_clients(&redis.url()).await < clients_before {
                assert!(Instant::now() < deadline, "the services did not reconnect to the restarted redis");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let lost_at = Instant::now();

    // N concurrent refreshes of the live session right after the loss: one
    // rotation, and every caller gets the same successor pair.
    let refreshes = (0..8).map(|_| refresh(&stack, &live.tokens.refresh_token));
    let pairs: Vec<TokenPair> = futures::future::join_all(refreshes)
        .await
        .into_iter()
        .map(|r| r.expect("a live session refreshes right after the loss"))
        .collect();
    assert!(pairs.iter().all(|p| p == &pairs[0]), "{} different pairs from one rotation", pairs.len());
    let refreshed_after = lost_at.elapsed();
    let rotated = pairs[0].clone();

    // Every ended session stays dead at every moment; the live ones come back.
    let mut back_after = None;
    let mut rebuilt_after = None;
    while lost_at.elapsed() < WATCH_FOR.max(REBUILT_WITHIN) {
        for (what, access) in &dead {
            let got = answers(&stack, access).await;
            assert!(
                got.iter().all(|a| *a == Err(Code::Unauthenticated)),
                "{loss:?}: the {what} session answered {got:?} {:?} after the loss",
                lost_at.elapsed()
            );
        }
        if back_after.is_none() && answers(&stack, &rotated.access_token).await == [Ok(()), Ok(()), Ok(())] {
            back_after = Some(lost_at.elapsed());
        }
        if rebuilt_after.is_none() && answers(&stack, idle.access()).await == [Ok(()), Ok(()), Ok(())] {
            rebuilt_after = Some(lost_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let back_after = back_after.unwrap_or_else(|| panic!("{loss:?}: the live session never came back"));
    assert!(back_after <= REBUILT_WITHIN, "{loss:?}: the refreshed session came back only after {back_after:?}");
    // The idle session's token works again with nothing restarted and no
    // refresh: the auth service rebuilt the mirror from Postgres.
    let rebuilt_after = rebuilt_after.unwrap_or_else(|| panic!("{loss:?}: the mirror was never rebuilt"));
    assert!(rebuilt_after <= REBUILT_WITHIN, "{loss:?}: the mirror was rebuilt only after {rebuilt_after:?}");
    assert_eq!(answers(&stack, live.access()).await, [Ok(()), Ok(()), Ok(())]);
    // And the rotation chains go on.
    refresh(&stack, &rotated.refresh_token).await.expect("the next rotation");
    refresh(&stack, &idle.tokens.refresh_token).await.expect("the idle session's rotation");
    eprintln!(
        "{loss:?}: refreshed {refreshed_after:?}, refreshed session served {back_after:?}, \
         idle session served {rebuilt_after:?} after the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flushall_ended_sessions_stay_dead_and_live_ones_keep_working() {
    ended_sessions_stay_dead_and_live_ones_come_back(Loss::Flushall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_unpersisted_redis_restarts_ended_sessions_stay_dead_and_live_ones_keep_working() {
    ended_sessions_stay_dead_and_live_ones_come_back(Loss::RestartEmpty).await;
}
