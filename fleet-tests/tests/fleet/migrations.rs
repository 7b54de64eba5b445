//! Many replicas starting at once on an empty database: the migrations are applied once, no
//! replica fails; and `MIGRATE_AT_START=false` leaves the database alone.

use sqlx::{Connection as _, PgConnection};
use taskgate_common::db;

/// Replicas of each backend started together.
const REPLICAS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_on_an_empty_database_migrate_it_once_and_all_start() {
    let database_url = taskgate_test_support::empty_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let prefix = taskgate_test_support::unique_prefix();
    let auths = (0..REPLICAS).map(|_| {
        auth_service::Application::build(auth_service::Settings::for_tests(
            database_url.clone(),
            redis_url.clone(),
            prefix.clone(),
        ))
    });
    let tasks = (0..REPLICAS).map(|_| {
        task_service::Application::build(task_service::Settings::for_tests(
            database_url.clone(),
            redis_url.clone(),
            prefix.clone(),
            "http://127.0.0.1:9".into(),
        ))
    });
    let (auths, tasks) = tokio::join!(futures::future::join_all(auths), futures::future::join_all(tasks));
    for (i, built) in auths.iter().enumerate() {
        assert!(built.is_ok(), "auth replica {i} failed to start: {:?}", built.as_ref().err());
    }
    for (i, built) in tasks.iter().enumerate() {
        assert!(built.is_ok(), "task replica {i} failed to start: {:?}", built.as_ref().err());
    }

    let mut conn = PgConnection::connect(&database_url).await.expect("connect");
    for (schema, migrator) in [(db::AUTH_SCHEMA, &db::AUTH_MIGRATOR), (db::TASK_SCHEMA, &db::TASK_MIGRATOR)] {
        let applied: Vec<(i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, success FROM {schema}._sqlx_migrations ORDER BY version"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("reading the migration table");
        let expected: Vec<i64> =
            migrator.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect();
        assert_eq!(
            applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            expected,
            "schema {schema}: each migration once"
        );
        assert!(applied.iter().all(|(_, ok)| *ok), "schema {schema}: every migration succeeded");
    }
}

#[tokio::test]
async fn migrate_at_start_off_leaves_an_empty_database_untouched() {
    let database_url = taskgate_test_support::empty_database().await;
    let mut settings = task_service::Settings::for_tests(
        database_url.clone(),
        taskgate_test_support::redis_url(),
        taskgate_test_support::unique_prefix(),
        "http://127.0.0.1:9".into(),
    );
    settings.migrate_at_start = false;
    // The service may start or fail without its tables; either way it must not create them.
    let _ = task_service::Application::build(settings).await;
    let mut conn = PgConnection::connect(&database_url).await.expect("connect");
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'task'")
            .fetch_one(&mut conn)
            .await
            .expect("looking for the schema");
    assert_eq!(schemas, 0, "MIGRATE_AT_START=false must not migrate");

    // `task-service migrate` (the Job's command) is `db::migrate`: it creates everything.
    let pool = db::pool(&database_url, db::TASK_SCHEMA, 1).expect("pool");
    db::migrate(&pool, db::TASK_SCHEMA, &db::TASK_MIGRATOR).await.expect("migrating with a pool of one");
    db::migrate(&pool, db::TASK_SCHEMA, &db::TASK_MIGRATOR).await.expect("migrating again is a no-op");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'task'")
        .fetch_one(&mut conn)
        .await
        .expect("counting tables");
    assert!(tables > 0, "the migrate command created the task tables");
}
