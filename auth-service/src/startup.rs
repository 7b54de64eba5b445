//! Putting the service together: pools, migrations, keys, the admin
//! bootstrap and the gRPC server on a listener the caller can learn the
//! port of.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use taskgate_common::{
    db, grpc,
    metrics::{Registry, grpc::GrpcServerMetrics},
    mtls::Mtls,
    redis::RedisHandle,
};
use taskgate_proto::{auth::v1::auth_service_server::AuthServiceServer, service_names};
use taskgate_tokens::{RevocationCheck, RevocationPolicy, Verifier, VerifierConfig};

use crate::{
    Settings,
    domain::{Email, LoginName, Password, Username},
    error::AuthError,
    issuer::TokenIssuer,
    keys::{KeyCipher, KeyStore, KeyStoreSource},
    metrics::AuthMetrics,
    password::{PasswordHasher, Verified},
    service::AuthApi,
    sessions::SessionStore,
    throttle::LoginThrottle,
    users::{NewUser, Users},
};

/// Longest any RPC may run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to the access-token lifetime for the revocation record's TTL: the
/// verifiers accept tokens this long past `exp`.
const VERIFIER_LEEWAY: Duration = Duration::from_secs(5);

/// A built auth service, bound to its port, ready to run.
pub struct Application {
    /// The bound gRPC and admin listeners.
    listeners: grpc::Listeners,
    /// The RPC implementation.
    api: AuthApi,
    /// Signing keys, reloaded in the background.
    keys: KeyStore,
    /// Seconds between background key reloads.
    key_reload_interval: Duration,
    /// The Postgres pool, for tests that look at rows.
    pool: PgPool,
    /// Mutual TLS material, when MTLS_* is set.
    mtls: Option<Mtls>,
    /// The go-grpc-prometheus series, counted by the server's layer.
    grpc_metrics: Arc<GrpcServerMetrics>,
}

/// Applies the `auth` schema's migrations (the `migrate` command).
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = db::pool(settings.database_url.expose_secret(), db::AUTH_SCHEMA, 2)?;
    db::migrate_when_ready(&pool, db::AUTH_SCHEMA, &db::AUTH_MIGRATOR, db::MIGRATION_PATIENCE).await?;
    pool.close().await;
    Ok(())
}

/// Introduces a new signing key (the `rotate-keys` command); returns its kid.
pub async fn rotate_keys(settings: &Settings) -> anyhow::Result<String> {
    anyhow::ensure!(settings.signing_key_file.is_none(), "SIGNING_KEY_FILE is set: rotate by replacing the file");
    let pool = db::pool(settings.database_url.expose_secret(), db::AUTH_SCHEMA, 2)?;
    db::migrate_when_ready(&pool, db::AUTH_SCHEMA, &db::AUTH_MIGRATOR, db::MIGRATION_PATIENCE).await?;
    let cipher = KeyCipher::from_setting(settings.key_encryption_key.as_ref())?;
    let kid = crate::keys::rotate(&pool, settings.key_publish_delay, cipher.as_ref()).await?;
    pool.close().await;
    Ok(kid)
}

/// Withdraws signing key `kid` at once (the `revoke-key` command); returns
/// the kid of the key that replaced it, if it was the one signing.
pub async fn revoke_key(settings: &Settings, kid: &str) -> anyhow::Result<Option<String>> {
    anyhow::ensure!(
        settings.signing_key_file.is_none(),
        "SIGNING_KEY_FILE is set: replace the file to withdraw its key"
    );
    let pool = db::pool(settings.database_url.expose_secret(), db::AUTH_SCHEMA, 2)?;
    db::migrate_when_ready(&pool, db::AUTH_SCHEMA, &db::AUTH_MIGRATOR, db::MIGRATION_PATIENCE).await?;
    let cipher = KeyCipher::from_setting(settings.key_encryption_key.as_ref())?;
    let replacement = crate::keys::revoke(&pool, kid, cipher.as_ref()).await?;
    pool.close().await;
    Ok(replacement)
}

/// Creates the admin named by ADMIN_USERNAME / ADMIN_EMAIL / ADMIN_PASSWORD
/// if it does not exist (like `createsuperuser`), and keeps it following
/// ADMIN_PASSWORD:
/// - an existing admin of that name whose password is no longer
///   ADMIN_PASSWORD gets it (rehashed) and every session of it ends, so a
///   rotated secret really replaces the old one;
/// - an existing non-admin account of that name is promoted only if
///   ADMIN_PASSWORD is its password: otherwise whoever registered the name
///   first would become admin. If it is not, the service logs one error that
///   names the variable and starts without a bootstrap admin (it does not
///   exit, which would only restart into the same error for ever).
async fn bootstrap_admin(
    settings: &Settings,
    users: &Users,
    hasher: &PasswordHasher,
    sessions: &SessionStore,
) -> anyhow::Result<()> {
    let username = settings.admin_username.as_deref().filter(|s| !s.is_empty());
    let email = settings.admin_email.as_deref().filter(|s| !s.is_empty());
    if username.is_none() && email.is_none() {
        return Ok(());
    }
    let username = username.map(Username::parse).transpose().map_err(|e| anyhow::anyhow!("ADMIN_USERNAME: {e}"))?;
    let email = email.map(Email::parse).transpose().map_err(|e| anyhow::anyhow!("ADMIN_EMAIL: {e}"))?;
    let raw_password = settings
        .admin_password
        .as_ref()
        .map(|p| p.expose_secret().to_owned())
        .context("ADMIN_PASSWORD is required with ADMIN_USERNAME or ADMIN_EMAIL")?;
    let related: Vec<&str> = username.iter().map(Username::as_str).chain(email.iter().map(Email::as_str)).collect();
    let password = Password::parse(&raw_password, &related).map_err(|e| anyhow::anyhow!("ADMIN_PASSWORD: {e}"))?;
    let names = username
        .clone()
        .map(|u| ("ADMIN_USERNAME", LoginName::Username(u)))
        .into_iter()
        .chain(email.clone().map(|e| ("ADMIN_EMAIL", LoginName::Email(e))));
    for (variable, name) in names {
        let existing =
            users.find_by_login(&name).await.map_err(|e| anyhow::anyhow!("looking up the admin account: {e}"))?;
        let Some(user) = existing else { continue };
        let verified = hasher
            .verify(hasher.slot()?, &raw_password, Some(&user.password_hash))
            .await
            .map_err(|e| anyhow::anyhow!("checking the admin password: {e}"))?;
        if user.is_admin {
            if verified == Verified::No {
                let hash = hasher
                    .hash(hasher.slot()?, &password)
                    .await
                    .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
                users
                    .set_password_hash(user.id, &hash)
                    .await
                    .map_err(|e| anyhow::anyhow!("storing the admin password: {e}"))?;
                let ended = sessions
                    .end_all(&user.id.to_string(), crate::sessions::EndReason::PasswordChanged)
                    .await
                    .map_err(|e| anyhow::anyhow!("ending the admin's sessions after a password change: {e}"))?;
                tracing::info!(user_id = %user.id, sessions = ended, "ADMIN_PASSWORD changed: the bootstrap admin's password follows it, its sessions ended");
            }
            return Ok(());
        }
        if verified == Verified::No {
            tracing::error!(
                "{variable} names an existing non-admin account whose password is not ADMIN_PASSWORD; \
                 it was not made admin and no bootstrap admin exists: choose another {variable}"
            );
            return Ok(());
        }
        users.make_admin(user.id).await.map_err(|e| anyhow::anyhow!("promoting the admin account: {e}"))?;
        tracing::info!(user_id = %user.id, "made an existing account admin");
        return Ok(());
    }
    let hash =
        hasher.hash(hasher.slot()?, &password).await.map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    match users
        .insert(NewUser {
            username: username.as_ref(),
            email: email.as_ref(),
            phone: None,
            password_hash: &hash,
            is_admin: true,
        })
        .await
    {
        Ok(user) => tracing::info!(user_id = %user.id, "created the admin account"),
        // Another replica created it a moment ago.
        Err(AuthError::AlreadyExists(_)) => tracing::info!("admin account created by another replica"),
        Err(e) => anyhow::bail!("creating the admin account: {e}"),
    }
    Ok(())
}

impl Application {
    /// Connects pools, applies migrations, loads/creates signing keys,
    /// bootstraps the admin, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::pool(settings.database_url.expose_secret(), db::AUTH_SCHEMA, settings.database_max_connections)?;
        if settings.migrate_at_start {
            db::migrate_when_ready(&pool, db::AUTH_SCHEMA, &db::AUTH_MIGRATOR, db::MIGRATION_PATIENCE).await?;
        }
        let redis = RedisHandle::connect(settings.redis_url.expose_secret(), taskgate_common::redis::POOL_SIZE).await?;

        let keys = match &settings.signing_key_file {
            Some(path) => KeyStore::from_file(path)?,
            None => {
                let cipher = KeyCipher::from_setting(settings.key_encryption_key.as_ref())?;
                KeyStore::from_database(
                    pool.clone(),
                    settings.key_publish_delay,
                    settings.longest_token_lifetime(),
                    cipher,
                )
                .await?
            }
        };
        let mtls = settings.mtls.load()?;
        // One registry per instance: tests run many services in one process.
        let mut registry = Registry::default();
        let grpc_metrics = GrpcServerMetrics::register(&mut registry, &[service_names::AUTH]);
        taskgate_common::telemetry::register_metrics(&mut registry);
        let metrics = AuthMetrics::register(&mut registry);
        let hasher =
            PasswordHasher::new(settings.hashing_threads(), settings.hash_queue_capacity, metrics.clone()).await?;
        let users = Users::new(pool.clone());

        let mut verifier_config = VerifierConfig::new(settings.jwt_issuer.clone(), settings.jwt_audience.clone());
        verifier_config.leeway = VERIFIER_LEEWAY;
        // Its own key set comes from Postgres: follow the reloads.
        verifier_config.refresh_interval = Some(settings.key_reload_interval.max(Duration::from_secs(1)));
        let verifier = Verifier::new(Arc::new(KeyStoreSource(keys.clone())), verifier_config);
        let sessions = SessionStore::new(
            pool.clone(),
            redis.clone(),
            settings.redis_prefix.clone(),
            settings.access_token_ttl + VERIFIER_LEEWAY,
            settings.refresh_grace,
            settings.refresh_token_ttl,
            settings.max_sessions_per_user,
        )
        .with_metrics(metrics.clone());
        bootstrap_admin(&settings, &users, &hasher, &sessions).await?;
        let throttle = LoginThrottle::new(redis.clone(), settings.redis_prefix.clone(), settings.throttle());
        let api = AuthApi {
            users,
            hasher,
            issuer: TokenIssuer::new(
                keys.clone(),
                settings.jwt_issuer.clone(),
                settings.jwt_audience.clone(),
                settings.access_token_ttl,
                settings.refresh_token_ttl,
            ),
            keys: keys.clone(),
            sessions,
            throttle,
            verifier,
            revocation: RevocationCheck::new(redis, settings.redis_prefix.clone(), RevocationPolicy::FailClosed),
            session_lifetime: settings.session_max_lifetime,
            strength_checks: Arc::new(tokio::sync::Semaphore::new(settings.hashing_threads())),
            metrics,
        };

        let listeners = grpc::Listeners::bind(
            (settings.listen_addr, "AUTH_LISTEN_ADDR"),
            (settings.admin_addr, "AUTH_ADMIN_ADDR"),
            registry,
        )
        .await?;
        Ok(Application {
            listeners,
            api,
            keys,
            key_reload_interval: settings.key_reload_interval,
            pool,
            mtls,
            grpc_metrics,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The address of the admin listener (`/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.listeners.admin_addr()
    }

    /// The signing keys (tests rotate through it).
    pub fn key_store(&self) -> KeyStore {
        self.keys.clone()
    }

    /// The Postgres pool (tests inspect rows through it).
    pub fn db_pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Serves AuthService, grpc.health.v1 and reflection until `shutdown`
    /// completes, then drains in-flight calls.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        taskgate_common::memory::give_back_when_quiet();
        // Other replicas may rotate keys: pick them up even without an
        // unknown `kid` to trigger a reload, and a withdrawn key at once.
        let reloader = tokio::spawn(crate::keys::reload_forever(
            self.keys.clone(),
            self.api.verifier.clone(),
            self.pool.clone(),
            self.key_reload_interval.max(Duration::from_secs(1)),
        ));

        // Redis may lose its data at any time: rebuild the sessions' mirror
        // from Postgres when it does (and once now, if it never was).
        let mirror = tokio::spawn(self.api.sessions.clone().keep_mirror_whole());

        let router = grpc::backend_server(self.mtls.as_ref(), REQUEST_TIMEOUT, self.grpc_metrics)?
            .add_service(AuthServiceServer::new(self.api).max_decoding_message_size(grpc::MAX_MESSAGE_BYTES));
        let result =
            grpc::serve_backend(router, service_names::AUTH, self.listeners, shutdown, grpc::DRAIN_TIMEOUT).await;
        reloader.abort();
        mirror.abort();
        result
    }
}
