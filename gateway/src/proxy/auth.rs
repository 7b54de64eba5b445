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

use taskgate_proto::{api::v1::Cost, service_names};

use crate::{metrics::Metrics, upstream::Upstream};

/// The auth service as the gateway serves it: every RPC forwarded.
#[derive(Clone)]
pub struct AuthProxy {
    /// Client on the channel balanced over the auth replicas, for the cheap calls.
    client: AuthServiceClient<Upstream>,
    /// Client on a second balanced channel (connections of its own to every
    /// replica), for the calls that hash a password, so they never hold up
    /// cheap ones.
    hashing: AuthServiceClient<Upstream>,
    /// The RPCs whose policy says they hash a password
    /// (`cost: COST_PASSWORD_HASH` in the contract).
    expensive: Arc<[String]>,
    /// Where forwarded calls are counted.
    metrics: Arc<Metrics>,
}

impl AuthProxy {
    /// A proxy forwarding cheap calls through `client` and the ones whose
    /// policy says they hash a password through `hashing`.
    pub fn new(
        client: AuthServiceClient<Upstream>,
        hashing: AuthServiceClient<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let expensive = taskgate_proto::DESCRIPTOR_POOL
            .get_service_by_name(service_names::AUTH)
            .map(|service| {
                service
                    .methods()
                    .filter(|m| taskgate_proto::policy(m).cost() == Cost::PasswordHash)
                    .map(|m| m.name().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        AuthProxy { client, hashing, expensive, metrics }
    }

    /// The client for `method`: the second channel when its policy says it
    /// hashes a password.
    fn client_for(&self, method: &str) -> AuthServiceClient<Upstream> {
        if self.expensive.iter().any(|m| m == method) { self.hashing.clone() } else { self.client.clone() }
    }
}

/// Forwards one call over the channel its cost calls for.
macro_rules! forward_auth {
    ($self:ident, $method:literal, $call:ident, $request:ident) => {{
        let (request, deadline) = crate::proxy::outbound($request)?;
        let mut client = $self.client_for($method);
        crate::proxy::finish(&$self.metrics, "auth", $method, deadline, client.$call(request)).await
    }};
}

#[tonic::async_trait]
impl AuthService for AuthProxy {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        forward_auth!(self, "Register", register, request)
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        forward_auth!(self, "Login", login, request)
    }

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<RefreshResponse>, Status> {
        forward_auth!(self, "Refresh", refresh, request)
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        forward_auth!(self, "Logout", logout, request)
    }

    async fn logout_all(&self, request: Request<LogoutAllRequest>) -> Result<Response<LogoutAllResponse>, Status> {
        forward_auth!(self, "LogoutAll", logout_all, request)
    }

    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<GetMeResponse>, Status> {
        forward_auth!(self, "GetMe", get_me, request)
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        forward_auth!(self, "ListSessions", list_sessions, request)
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        forward_auth!(self, "RevokeSession", revoke_session, request)
    }

    async fn get_jwks(&self, request: Request<GetJwksRequest>) -> Result<Response<GetJwksResponse>, Status> {
        forward_auth!(self, "GetJwks", get_jwks, request)
    }

    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<DisableUserResponse>, Status> {
        forward_auth!(self, "DisableUser", disable_user, request)
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        forward_auth!(self, "ChangePassword", change_password, request)
    }

    async fn enable_user(&self, request: Request<EnableUserRequest>) -> Result<Response<EnableUserResponse>, Status> {
        forward_auth!(self, "EnableUser", enable_user, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_calls_that_hash_a_password_come_from_the_contract() {
        let channel = taskgate_common::balance::BalancedChannel::from(
            tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
        );
        let client = AuthServiceClient::new(Upstream::new("auth", channel));
        let proxy = AuthProxy::new(client.clone(), client, Metrics::new());
        let mut expensive = proxy.expensive.to_vec();
        expensive.sort();
        assert_eq!(expensive, ["ChangePassword", "Login", "Register"]);
    }
}
