//! `taskgate.auth.v1.AuthService`, forwarded to the auth service.

use std::sync::Arc;

use taskgate_proto::auth::v1::{
    ChangePasswordRequest, ChangePasswordResponse, DisableUserRequest, DisableUserResponse, EnableUserRequest,
    EnableUserResponse, GetJwksRequest, GetJwksResponse, GetMeRequest, GetMeResponse, ListSessionsRequest,
    ListSessionsResponse, LoginRequest, LoginResponse, LogoutAllRequest, LogoutAllResponse, LogoutRequest,
    LogoutResponse, RefreshRequest, RefreshResponse, RegisterRequest, RegisterResponse, RevokeSessionRequest,
    RevokeSessionResponse, auth_service_client::AuthServiceClient, auth_service_server::AuthService,
};
use tonic::{Request, Response, Status};

use crate::{metrics::Metrics, proxy::forward, upstream::Upstream};

/// The auth service as the gateway serves it: every RPC forwarded.
#[derive(Clone)]
pub struct AuthProxy {
    /// Client on the channel balanced over the auth replicas, for the cheap calls.
    client: AuthServiceClient<Upstream>,
    /// Client on a second balanced channel (connections of its own to every
    /// replica), for the calls that hash a password (Register, Login,
    /// ChangePassword), so they never hold up cheap ones.
    hashing: AuthServiceClient<Upstream>,
    /// Where forwarded calls are counted.
    metrics: Arc<Metrics>,
}

impl AuthProxy {
    /// A proxy forwarding cheap calls through `client` and password-hashing
    /// ones through `hashing`.
    pub fn new(
        client: AuthServiceClient<Upstream>,
        hashing: AuthServiceClient<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AuthProxy { client, hashing, metrics }
    }
}

/// Forwards a password-hashing call over the proxy's second channel.
macro_rules! forward_hashing {
    ($self:ident, $method:literal, $call:ident, $request:ident) => {{
        let (request, deadline) = crate::proxy::outbound($request)?;
        let mut client = $self.hashing.clone();
        crate::proxy::finish(&$self.metrics, "auth", $method, deadline, client.$call(request)).await
    }};
}

#[tonic::async_trait]
impl AuthService for AuthProxy {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        forward_hashing!(self, "Register", register, request)
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        forward_hashing!(self, "Login", login, request)
    }

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<RefreshResponse>, Status> {
        forward!(self, "auth", "Refresh", refresh, request)
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        forward!(self, "auth", "Logout", logout, request)
    }

    async fn logout_all(&self, request: Request<LogoutAllRequest>) -> Result<Response<LogoutAllResponse>, Status> {
        forward!(self, "auth", "LogoutAll", logout_all, request)
    }

    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<GetMeResponse>, Status> {
        forward!(self, "auth", "GetMe", get_me, request)
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        forward!(self, "auth", "ListSessions", list_sessions, request)
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        forward!(self, "auth", "RevokeSession", revoke_session, request)
    }

    async fn get_jwks(&self, request: Request<GetJwksRequest>) -> Result<Response<GetJwksResponse>, Status> {
        forward!(self, "auth", "GetJwks", get_jwks, request)
    }

    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<DisableUserResponse>, Status> {
        forward!(self, "auth", "DisableUser", disable_user, request)
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        forward_hashing!(self, "ChangePassword", change_password, request)
    }

    async fn enable_user(&self, request: Request<EnableUserRequest>) -> Result<Response<EnableUserResponse>, Status> {
        forward!(self, "auth", "EnableUser", enable_user, request)
    }
}
