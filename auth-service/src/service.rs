//! The `AuthService` gRPC implementation: each RPC checks its request
//! against the contract's `buf.validate` rules (after authenticating the
//! caller, for the Bearer calls), parses it into domain types, does its work through the stores, and returns an
//! [`AuthError`] that becomes a status in one place.

use std::{sync::Arc, time::Duration};

use taskgate_proto::auth::v1::{
    ChangePasswordRequest, ChangePasswordResponse, DisableUserRequest, DisableUserResponse, EnableUserRequest,
    EnableUserResponse, GetJwksRequest, GetJwksResponse, GetMeRequest, GetMeResponse, ListSessionsRequest,
    ListSessionsResponse, LoginRequest, LoginResponse, LogoutAllRequest, LogoutAllResponse, LogoutRequest,
    LogoutResponse, RefreshRequest, RefreshResponse, RegisterRequest, RegisterResponse, RevokeSessionRequest,
    RevokeSessionResponse, Session, TokenPair, auth_service_server::AuthService,
};
use taskgate_tokens::{Claims, RevocationCheck, TokenKind, Verifier, VerifyError, bearer_token};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use uuid::Uuid;

use crate::{
    domain::{Email, LoginName, Password, Phone, Username},
    error::{AuthError, check},
    issuer::{PairSpec, TokenIssuer, now_secs},
    keys::KeyStore,
    metrics::AuthMetrics,
    password::{PasswordHasher, Verified},
    sessions::{EndReason, NewSession, RefreshOutcome, SessionStore},
    throttle::{LoginThrottle, Subject},
    users::{NewUser, UserRow, Users},
};

/// Everything the RPCs need. Cheap to clone.
#[derive(Clone)]
pub struct AuthApi {
    /// Accounts in Postgres.
    pub(crate) users: Users,
    /// argon2id on the fixed hashing threads, behind a bounded queue.
    pub(crate) hasher: PasswordHasher,
    /// Signs token pairs.
    pub(crate) issuer: TokenIssuer,
    /// Signing keys, for the JWKS.
    pub(crate) keys: KeyStore,
    /// Sessions in Redis.
    pub(crate) sessions: SessionStore,
    /// Login and registration windows in Redis.
    pub(crate) throttle: LoginThrottle,
    /// Verifies tokens with this service's own keys.
    pub(crate) verifier: Verifier,
    /// Rejects access tokens of ended sessions (fails closed).
    pub(crate) revocation: RevocationCheck,
    /// Absolute session lifetime.
    pub(crate) session_lifetime: Duration,
    /// One permit per hashing thread: password strength estimates (CPU work
    /// on the blocking pool) run at most this many at once, so a flood of
    /// registrations cannot take the cores from the cheap calls.
    pub(crate) strength_checks: Arc<Semaphore>,
    /// Logins and refreshes by outcome, for `/metrics`.
    pub(crate) metrics: AuthMetrics,
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// The caller's address: `x-client-ip` set by the gateway (believed only
/// from the gateway, see [`taskgate_common::mtls::from_gateway`]), else the
/// peer. A header that is not an IP address is ignored, so it cannot smuggle
/// arbitrary text into Redis keys or session records.
fn client_ip<T>(request: &Request<T>) -> String {
    let from_gateway = taskgate_common::mtls::from_gateway(request);
    request
        .metadata()
        .get("x-client-ip")
        .filter(|_| from_gateway)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<std::net::IpAddr>().ok())
        .or_else(|| request.remote_addr().map(|a| a.ip()))
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

fn user_agent(metadata: &MetadataMap) -> String {
    metadata.get("user-agent").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect()).unwrap_or_default()
}

/// `Some(s)` unless absent or blank.
fn given(field: Option<String>) -> Option<String> {
    field.filter(|s| !s.trim().is_empty())
}

fn parse_uuid(field: &'static str, raw: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(raw.trim()).map_err(|_| AuthError::invalid(field, "must be a UUID"))
}

impl AuthApi {
    /// The verified, unrevoked access-token claims of the caller.
    async fn caller(&self, metadata: &MetadataMap) -> Result<Claims, AuthError> {
        let token = bearer_token(metadata).ok_or(VerifyError::Missing)?;
        let claims = self.verifier.verify(token, TokenKind::Access).await?;
        self.revocation.check(&claims).await?;
        Ok(claims)
    }

    /// Validates a new password off the async workers (the strength estimate
    /// costs up to milliseconds of CPU), at most one per hashing thread at a
    /// time; errors name `field`.
    async fn new_password(
        &self,
        field: &'static str,
        raw: String,
        related: Vec<String>,
    ) -> Result<Password, AuthError> {
        let _permit = self.strength_checks.acquire().await.map_err(|e| AuthError::Unexpected(e.into()))?;
        let checked = tokio::task::spawn_blocking(move || {
            let related: Vec<&str> = related.iter().map(String::as_str).collect();
            Password::parse(&raw, &related)
        })
        .await
        .map_err(|e| AuthError::Unexpected(anyhow::anyhow!("password check panicked: {e}")))?;
        checked.map_err(|e| match e {
            AuthError::InvalidArgument { reason, .. } => AuthError::InvalidArgument { field, reason },
            other => other,
        })
    }

    async fn register(&self, mut req: RegisterRequest, ip: &str) -> Result<RegisterResponse, AuthError> {
        // Blank login names are not given, and usernames and email addresses
        // are trimmed: the contract's rules apply to what is kept. (A phone
        // number is normalised by its domain type, which drops separators.)
        req.username = given(req.username).map(|s| s.trim().to_owned());
        req.email = given(req.email).map(|s| s.trim().to_owned());
        req.phone = given(req.phone);
        check(&req)?;
        let username = req.username.map(|s| Username::parse(&s)).transpose()?;
        let email = req.email.map(|s| Email::parse(&s)).transpose()?;
        let phone = req.phone.map(|s| Phone::parse(&s)).transpose()?;
        if username.is_none() && email.is_none() && phone.is_none() {
            return Err(AuthError::invalid("username", "give at least one of username, email or phone"));
        }
        let related: Vec<String> = username
            .iter()
            .map(|u| u.as_str().to_owned())
            .chain(email.iter().flat_map(|e| e.as_str().split('@').map(str::to_owned)))
            .collect();
        // A slot on the hashing threads first: a flood is refused here,
        // before it costs CPU, a database connection or a Redis call.
        let slot = self.hasher.slot()?;
        let password = self.new_password("password", req.password, related).await?;
        // Counted per address before anything is hashed. Registration needs
        // only Postgres: with Redis down the per-address limit is skipped
        // (the hashing slots still bound the load).
        match self.throttle.reserve_registration(ip).await {
            Err(AuthError::Unavailable(_)) => tracing::warn!("registration throttle skipped: redis unavailable"),
            other => other?,
        }
        // A taken name is answered without hashing, after about as long as a
        // hash takes, so the answer time does not tell more than the answer.
        let names = username
            .clone()
            .map(LoginName::Username)
            .into_iter()
            .chain(email.clone().map(LoginName::Email))
            .chain(phone.clone().map(LoginName::Phone));
        for name in names {
            if self.users.find_by_login(&name).await?.is_some() {
                tokio::time::sleep(self.hasher.typical_hash_time()).await;
                return Err(AuthError::AlreadyExists(match name {
                    LoginName::Username(_) => "username",
                    LoginName::Email(_) => "email",
                    LoginName::Phone(_) => "phone",
                }));
            }
        }
        let hash = self.hasher.hash(slot, &password).await?;
        let user = self
            .users
            .insert(NewUser {
                username: username.as_ref(),
                email: email.as_ref(),
                phone: phone.as_ref(),
                password_hash: &hash,
                is_admin: false,
            })
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(RegisterResponse { user: Some(user.to_proto()) })
    }

    /// Starts a session for `user` and mints its first pair. The user's
    /// state is read once more after the session exists: a DisableUser that
    /// committed before that read has ended it or will (its LogoutAll runs
    /// after its commit and sees the session), one that commits after it
    /// finds the session in the index. Either way no token of a disabled
    /// user outlives the disable.
    async fn start_session(&self, user: &UserRow, user_agent: &str, ip: &str) -> Result<TokenPair, AuthError> {
        let iat = now_secs();
        let lifetime = i64::try_from(self.session_lifetime.as_secs()).unwrap_or(i64::MAX);
        let spec = PairSpec {
            sub: user.id.to_string(),
            sid: Uuid::new_v4().to_string(),
            access_jti: Uuid::new_v4().to_string(),
            refresh_jti: Uuid::new_v4().to_string(),
            iat,
            session_exp: iat.saturating_add(lifetime),
        };
        self.sessions.create(NewSession { spec: &spec, user_agent, ip }).await?;
        match self.users.get(user.id).await? {
            Some(now) if now.disabled_at.is_none() => {}
            _ => {
                self.sessions.end(&spec.sub, &spec.sid, EndReason::UserDisabled).await?;
                tracing::info!(user_id = %user.id, "login refused: user disabled while it was checked");
                return Err(AuthError::InvalidCredentials);
            }
        }
        let tokens = self.issuer.mint(&spec)?;
        tracing::info!(user_id = %user.id, session_id = %spec.sid, "session started");
        Ok(tokens)
    }

    async fn login(&self, req: LoginRequest, user_agent: &str, ip: &str) -> Result<LoginResponse, AuthError> {
        // The contract bounds the password's length (`max_bytes`): hashing
        // megabytes of input would be a cheap denial of service.
        check(&req)?;
        let raw = if req.login.trim().is_empty() { req.username } else { req.login };
        if raw.trim().is_empty() {
            return Err(AuthError::invalid("login", "must not be empty"));
        }
        // A slot on the hashing threads first: a flood is refused here,
        // before it costs a database connection or a Redis call.
        let slot = self.hasher.slot()?;
        let name = LoginName::parse(&raw);
        let user = match &name {
            Some(n) => self.users.find_by_login(n).await?,
            None => None,
        };
        // One budget per account, whichever of its names was typed.
        let subject = match (&user, &name) {
            (Some(user), _) => Subject::Account(user.id),
            (None, Some(n)) => Subject::UnknownName(n.throttle_key()),
            (None, None) => {
                Subject::UnknownName(format!("raw:{}", raw.trim().to_lowercase().chars().take(128).collect::<String>()))
            }
        };
        let reservation = self.throttle.reserve_login(&subject, ip).await?;

        // Unknown logins are checked against a dummy hash: same work, same time.
        let verified =
            match self.hasher.verify(slot, &req.password, user.as_ref().map(|u| u.password_hash.as_str())).await {
                Ok(verified) => verified,
                Err(e) => {
                    self.throttle.cancel(reservation).await;
                    return Err(e);
                }
            };
        let user = match (user, verified) {
            (Some(user), Verified::Yes | Verified::YesRehashed(_)) if user.disabled_at.is_some() => {
                tracing::info!(user_id = %user.id, "login refused: user disabled");
                None
            }
            (Some(user), Verified::YesRehashed(new_hash)) => {
                if let Err(e) = self.users.set_password_hash(user.id, &new_hash).await {
                    // The login still succeeds; the next one tries again.
                    tracing::warn!(user_id = %user.id, error = %e, "storing a rehashed password failed");
                } else {
                    tracing::info!(user_id = %user.id, "password rehashed with current parameters");
                }
                Some(user)
            }
            (Some(user), Verified::Yes) => Some(user),
            _ => None,
        };
        let Some(user) = user else {
            self.throttle.failed(reservation);
            return Err(AuthError::InvalidCredentials);
        };
        self.throttle.succeeded(reservation).await?;
        let tokens = self.start_session(&user, user_agent, ip).await?;
        tracing::info!(user_id = %user.id, "login");
        Ok(LoginResponse { tokens: Some(tokens) })
    }

    async fn change_password(
        &self,
        metadata: &MetadataMap,
        req: ChangePasswordRequest,
        user_agent: &str,
        ip: &str,
    ) -> Result<ChangePasswordResponse, AuthError> {
        let claims = self.caller(metadata).await?;
        let uid = Uuid::parse_str(&claims.sub).map_err(|_| VerifyError::InvalidClaims)?;
        let user = match self.users.get(uid).await? {
            Some(user) if user.disabled_at.is_none() => user,
            _ => return Err(AuthError::SessionRevoked),
        };
        // Also requires `current_password` and bounds its length.
        check(&req)?;
        if req.new_password == req.current_password {
            return Err(AuthError::invalid("new_password", "must differ from the current password"));
        }
        let related: Vec<String> = user
            .username
            .iter()
            .cloned()
            .chain(user.email.iter().flat_map(|e| e.split('@').map(str::to_owned)))
            .collect();
        let slot = self.hasher.slot()?;
        let new_password = self.new_password("new_password", req.new_password, related).await?;
        // Guessing the current password with a stolen access token spends the
        // account's login budget like any other guess.
        let reservation = self.throttle.reserve_login(&Subject::Account(uid), ip).await?;
        let verified = match self.hasher.verify(slot, &req.current_password, Some(&user.password_hash)).await {
            Ok(verified) => verified,
            Err(e) => {
                self.throttle.cancel(reservation).await;
                return Err(e);
            }
        };
        if verified == Verified::No {
            self.throttle.failed(reservation);
            return Err(AuthError::invalid("current_password", "is not your current password"));
        }
        self.throttle.succeeded(reservation).await?;
        let hash = self.hasher.hash(self.hasher.slot()?, &new_password).await?;
        self.users.set_password_hash(uid, &hash).await?;
        let ended = self.sessions.end_all(&claims.sub, EndReason::PasswordChanged).await?;
        // The caller's own session may have been missing from the index.
        self.sessions.end(&claims.sub, &claims.sid, EndReason::PasswordChanged).await?;
        let tokens = self.start_session(&user, user_agent, ip).await?;
        tracing::info!(user_id = %uid, sessions = ended, "password changed, every earlier session ended");
        Ok(ChangePasswordResponse { tokens: Some(tokens) })
    }

    async fn refresh(&self, req: RefreshRequest) -> Result<RefreshResponse, AuthError> {
        check(&req)?;
        if req.refresh_token.trim().is_empty() {
            return Err(AuthError::invalid("refresh_token", "must not be empty"));
        }
        let claims = self.verifier.verify(req.refresh_token.trim(), TokenKind::Refresh).await?;
        // The session store checks the user is not disabled in the same query
        // that rotates.
        let next = PairSpec {
            sub: claims.sub.clone(),
            sid: claims.sid.clone(),
            access_jti: Uuid::new_v4().to_string(),
            refresh_jti: Uuid::new_v4().to_string(),
            iat: now_secs(),
            session_exp: 0,
        };
        let outcome = self.sessions.refresh(&claims.jti, &next).await?;
        self.metrics.refresh(match &outcome {
            RefreshOutcome::Rotated(_) => "rotated",
            RefreshOutcome::Grace(_) => "grace",
            RefreshOutcome::Missing => "session_ended",
            RefreshOutcome::Reuse => "reuse_detected",
        });
        match outcome {
            RefreshOutcome::Rotated(spec) | RefreshOutcome::Grace(spec) => {
                Ok(RefreshResponse { tokens: Some(self.issuer.mint(&spec)?) })
            }
            RefreshOutcome::Missing => Err(AuthError::SessionRevoked),
            RefreshOutcome::Reuse => {
                tracing::warn!(user_id = %claims.sub, session_id = %claims.sid, "refresh token reuse detected, session revoked");
                Err(AuthError::SessionRevoked)
            }
        }
    }

    async fn logout(&self, metadata: &MetadataMap, req: LogoutRequest) -> Result<LogoutResponse, AuthError> {
        check(&req)?;
        let claims = if req.refresh_token.trim().is_empty() {
            self.caller(metadata).await?
        } else {
            self.verifier.verify(req.refresh_token.trim(), TokenKind::Refresh).await?
        };
        self.sessions.end(&claims.sub, &claims.sid, EndReason::Logout).await?;
        tracing::info!(user_id = %claims.sub, session_id = %claims.sid, "logout");
        Ok(LogoutResponse {})
    }

    async fn logout_all(&self, metadata: &MetadataMap) -> Result<LogoutAllResponse, AuthError> {
        let claims = self.caller(metadata).await?;
        let n = self.sessions.end_all(&claims.sub, EndReason::LogoutAll).await?;
        // The caller's own session may have been missing from the set.
        self.sessions.end(&claims.sub, &claims.sid, EndReason::LogoutAll).await?;
        tracing::info!(user_id = %claims.sub, sessions = n, "logout from every session");
        Ok(LogoutAllResponse { revoked_sessions: i32::try_from(n).unwrap_or(i32::MAX) })
    }

    async fn get_me(&self, metadata: &MetadataMap) -> Result<GetMeResponse, AuthError> {
        let claims = self.caller(metadata).await?;
        let uid = Uuid::parse_str(&claims.sub).map_err(|_| VerifyError::InvalidClaims)?;
        match self.users.get(uid).await? {
            Some(user) if user.disabled_at.is_none() => Ok(GetMeResponse { user: Some(user.to_proto()) }),
            _ => Err(AuthError::SessionRevoked),
        }
    }

    async fn list_sessions(&self, metadata: &MetadataMap) -> Result<ListSessionsResponse, AuthError> {
        let claims = self.caller(metadata).await?;
        let sessions = self
            .sessions
            .list(&claims.sub)
            .await?
            .into_iter()
            .map(|s| Session {
                current: s.id == claims.sid,
                id: s.id,
                created_at: Some(timestamp_ms(s.created_ms)),
                last_refreshed_at: (s.last_refresh_ms > 0).then(|| timestamp_ms(s.last_refresh_ms)),
                expires_at: Some(timestamp_ms(s.abs_exp.saturating_mul(1000))),
                user_agent: Some(s.user_agent).filter(|ua| !ua.is_empty()),
                ip_address: Some(s.ip).filter(|ip| !ip.is_empty()),
            })
            .collect();
        Ok(ListSessionsResponse { sessions })
    }

    async fn revoke_session(
        &self,
        metadata: &MetadataMap,
        req: RevokeSessionRequest,
    ) -> Result<RevokeSessionResponse, AuthError> {
        let claims = self.caller(metadata).await?;
        check(&req)?;
        let sid = parse_uuid("id", &req.id)?.to_string();
        // Someone else's session looks exactly like a missing one.
        if !self.sessions.end_owned(&claims.sub, &sid, EndReason::RevokedByUser).await? {
            return Err(AuthError::NotFound("session"));
        }
        tracing::info!(user_id = %claims.sub, session_id = %sid, "session revoked by its user");
        Ok(RevokeSessionResponse {})
    }

    /// The caller's id, if the caller is an active admin.
    async fn admin(&self, metadata: &MetadataMap) -> Result<Uuid, AuthError> {
        let claims = self.caller(metadata).await?;
        let caller_id = Uuid::parse_str(&claims.sub).map_err(|_| VerifyError::InvalidClaims)?;
        match self.users.get(caller_id).await? {
            Some(admin) if admin.is_admin && admin.disabled_at.is_none() => Ok(caller_id),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    async fn disable_user(
        &self,
        metadata: &MetadataMap,
        req: DisableUserRequest,
    ) -> Result<DisableUserResponse, AuthError> {
        let admin_id = self.admin(metadata).await?;
        check(&req)?;
        let target = parse_uuid("id", &req.id)?;
        let user = self.users.disable(target).await?.ok_or(AuthError::NotFound("user"))?;
        let n = self.sessions.end_all(&user.id.to_string(), EndReason::UserDisabled).await?;
        tracing::info!(%admin_id, user_id = %user.id, sessions = n, "user disabled");
        Ok(DisableUserResponse { user: Some(user.to_proto()) })
    }

    async fn enable_user(
        &self,
        metadata: &MetadataMap,
        req: EnableUserRequest,
    ) -> Result<EnableUserResponse, AuthError> {
        let admin_id = self.admin(metadata).await?;
        check(&req)?;
        let target = parse_uuid("id", &req.id)?;
        let user = self.users.enable(target).await?.ok_or(AuthError::NotFound("user"))?;
        tracing::info!(%admin_id, user_id = %user.id, "user enabled");
        Ok(EnableUserResponse { user: Some(user.to_proto()) })
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let ip = client_ip(&request);
        Ok(Response::new(AuthApi::register(self, request.into_inner(), &ip).await?))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let ip = client_ip(&request);
        let ua = user_agent(request.metadata());
        let result = AuthApi::login(self, request.into_inner(), &ua, &ip).await;
        self.metrics.login(&result);
        Ok(Response::new(result?))
    }

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<RefreshResponse>, Status> {
        let result = AuthApi::refresh(self, request.into_inner()).await;
        // Outcomes the session store decided were counted there; these are
        // the calls refused before it.
        match &result {
            Err(AuthError::TokenInvalid(_)) => self.metrics.refresh("invalid_token"),
            Err(AuthError::InvalidArgument { .. } | AuthError::Violations(_)) => {
                self.metrics.refresh("invalid_argument")
            }
            Err(AuthError::SessionRevoked) | Ok(_) => {}
            Err(_) => self.metrics.refresh("error"),
        }
        Ok(Response::new(result?))
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        Ok(Response::new(AuthApi::logout(self, &metadata, req).await?))
    }

    async fn logout_all(&self, request: Request<LogoutAllRequest>) -> Result<Response<LogoutAllResponse>, Status> {
        // Requests without fields are checked too: a rule added to one later
        // is enforced without touching the handler.
        check(request.get_ref())?;
        Ok(Response::new(AuthApi::logout_all(self, request.metadata()).await?))
    }

    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<GetMeResponse>, Status> {
        check(request.get_ref())?;
        Ok(Response::new(AuthApi::get_me(self, request.metadata()).await?))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        check(request.get_ref())?;
        Ok(Response::new(AuthApi::list_sessions(self, request.metadata()).await?))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        Ok(Response::new(AuthApi::revoke_session(self, &metadata, req).await?))
    }

    async fn get_jwks(&self, request: Request<GetJwksRequest>) -> Result<Response<GetJwksResponse>, Status> {
        check(request.get_ref())?;
        Ok(Response::new(GetJwksResponse { keys: self.keys.jwks() }))
    }

    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<DisableUserResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        Ok(Response::new(AuthApi::disable_user(self, &metadata, req).await?))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let ip = client_ip(&request);
        let (metadata, _, req) = request.into_parts();
        let ua = user_agent(&metadata);
        Ok(Response::new(AuthApi::change_password(self, &metadata, req, &ua, &ip).await?))
    }

    async fn enable_user(&self, request: Request<EnableUserRequest>) -> Result<Response<EnableUserResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        Ok(Response::new(AuthApi::enable_user(self, &metadata, req).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from `peer` (plain HTTP) carrying `x-client-ip: value`.
    fn from_peer_with_client_ip(peer: &str, value: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert("x-client-ip", value.parse().expect("ascii"));
        let remote_addr = Some(peer.parse().expect("a socket address"));
        request.extensions_mut().insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr });
        request
    }

    fn with_client_ip(value: &str) -> Request<()> {
        from_peer_with_client_ip("127.0.0.1:40000", value)
    }

    #[test]
    fn the_client_ip_header_is_used_only_when_it_is_an_address() {
        assert_eq!(client_ip(&with_client_ip(" 203.0.113.7 ")), "203.0.113.7");
        assert_eq!(client_ip(&with_client_ip("2001:db8::1")), "2001:db8::1");
        assert_eq!(client_ip(&with_client_ip("evil:key")), "127.0.0.1");
        assert_eq!(client_ip(&Request::new(())), "");
    }

    #[test]
    fn the_client_ip_header_is_believed_only_from_the_gateway() {
        // Without mutual TLS only a loopback peer can be the gateway.
        let request = from_peer_with_client_ip("198.51.100.7:40000", "203.0.113.7");
        assert_eq!(client_ip(&request), "198.51.100.7");
    }

    #[test]
    fn session_timestamps_convert_from_milliseconds() {
        let t = timestamp_ms(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
