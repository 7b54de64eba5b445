//! Each request's route, and the policy the contract declares for it.
//!
//! A route is an RPC, reached by its gRPC path or by one of its
//! `google.api.http` bindings (the HTTP method and the path template axum
//! matched), or one of the gateway's own endpoints. An RPC's policy is its
//! `taskgate.api.v1.policy` option in `proto/` ([`taskgate_proto::policy`]):
//! who may call it and what its calls are charged to. The gateway's own
//! endpoints, which no proto declares, are listed once, in [`OWN_ENDPOINTS`]
//! and [`OWN_SERVICES`]. The authentication layer, the rate limiter, the
//! metrics labels and the OpenAPI document all read policies from here;
//! nothing else lists paths.
//!
//! [`classify`] is the outermost middleware: it looks the route up once
//! and leaves it on the request as a [`Route`] extension for the layers
//! below.

use std::{collections::HashMap, sync::LazyLock};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use taskgate_proto::HttpRule;
pub use taskgate_proto::api::v1::{Access, RateLimit};

use taskgate_proto::contract::route_path;

/// The gateway's own endpoints (path templates as axum matches them) and
/// their policy: probes are exempt from the rate limit; the document, the
/// docs page and the demo are public.
pub const OWN_ENDPOINTS: &[(&str, Access, RateLimit)] = &[
    ("/healthz", Access::Public, RateLimit::Exempt),
    ("/readyz", Access::Public, RateLimit::Exempt),
    ("/openapi.json", Access::Public, RateLimit::Caller),
    ("/docs", Access::Public, RateLimit::Caller),
    ("/docs/", Access::Public, RateLimit::Caller),
    ("/docs/{file}", Access::Public, RateLimit::Caller),
    ("/demo", Access::Public, RateLimit::Caller),
    ("/demo/", Access::Public, RateLimit::Caller),
    ("/demo/{*path}", Access::Public, RateLimit::Caller),
];

/// The gRPC services the gateway answers itself, public like any gRPC
/// server's: health checking and server reflection.
pub const OWN_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// What the gateway knows about a request's route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Who may call it.
    pub access: Access,
    /// What its calls are charged to.
    pub rate_limit: RateLimit,
    /// The `route` label of its REST requests: the path template, or
    /// `other`. Always from a fixed set, so no client can add a label value.
    pub label: &'static str,
    /// The RPC it reaches, if it is one.
    pub rpc: Option<&'static MethodDescriptor>,
}

impl Route {
    /// A route the router serves that no policy declares (a method no
    /// binding has on a known path, a method no proto declares on a known
    /// gRPC service): closed, so a route added without a policy is never
    /// open; charged to the caller.
    pub const UNDECLARED: Route =
        Route { access: Access::TokenRequired, rate_limit: RateLimit::Caller, label: "other", rpc: None };

    /// A path the router does not serve at all: only the fallback's 404 or
    /// UNIMPLEMENTED answers it, to anyone, charged to the caller.
    pub const NOT_FOUND: Route = Route { access: Access::Public, ..Route::UNDECLARED };

    /// The route of an RPC with the policy its contract declares; an
    /// undeclared access is a required token, an undeclared limit the caller.
    fn of_rpc(method: &'static MethodDescriptor, label: &'static str) -> Route {
        let policy = taskgate_proto::policy(method);
        let access = match policy.access() {
            Access::Unspecified => Access::TokenRequired,
            access => access,
        };
        let rate_limit = match policy.rate_limit() {
            RateLimit::Unspecified => RateLimit::Caller,
            limit => limit,
        };
        Route { access, rate_limit, label, rpc: Some(method) }
    }

    /// Whether a call may go on without a verified token.
    pub fn is_public(&self) -> bool {
        self.access != Access::TokenRequired
    }

    /// The route of `request`: the [`Route`] extension [`classify`] left,
    /// or, outside the stack, a fresh look-up.
    pub fn of<B>(request: &http::Request<B>) -> Route {
        request.extensions().get::<Route>().copied().unwrap_or_else(|| Routes::contract().find(request))
    }
}

/// Every route of a contract, by gRPC path and by REST binding.
#[derive(Debug, Default)]
pub struct Routes {
    /// `/<package>.<Service>/<Method>` → its route.
    grpc: HashMap<String, Route>,
    /// (HTTP method, axum path template) → the route of its binding.
    rest: HashMap<(Method, &'static str), Route>,
}

impl Routes {
    /// The routes of taskgate's own contract, built once.
    pub fn contract() -> &'static Routes {
        static ROUTES: LazyLock<Routes> =
            LazyLock::new(|| Routes::new(&taskgate_proto::DESCRIPTOR_POOL, &taskgate_proto::HTTP_RULES));
        &ROUTES
    }

    /// The routes of every method of every service in `pool`, and of each
    /// of `bindings` (the `google.api.http` rules the build extracted from
    /// the same descriptors). A contract's routes live as long as the
    /// process, so its method descriptors are leaked once.
    pub fn new(pool: &DescriptorPool, bindings: &[HttpRule]) -> Routes {
        let mut routes = Routes::default();
        for service in pool.services() {
            for method in service.methods() {
                let method: &'static MethodDescriptor = Box::leak(Box::new(method));
                let path = format!("/{}/{}", service.full_name(), method.name());
                routes.grpc.insert(path, Route::of_rpc(method, "other"));
            }
        }
        for rule in bindings {
            let path = format!("/{}/{}", rule.service, rule.method);
            let (Some(rpc), Ok(verb)) =
                (routes.grpc.get(&path).and_then(|r| r.rpc), Method::from_bytes(rule.verb.as_bytes()))
            else {
                continue;
            };
            let label: &'static str = route_path(&rule.path).leak();
            routes.rest.insert((verb, label), Route::of_rpc(rpc, label));
        }
        routes
    }

    /// The route of `request`, gRPC path first, then REST binding, then
    /// the gateway's own endpoints.
    pub fn find<B>(&self, request: &http::Request<B>) -> Route {
        let path = request.uri().path();
        if let Some(route) = self.grpc.get(path) {
            return *route;
        }
        if let Some(service) = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(s, _)| s)
            && OWN_SERVICES.contains(&service)
        {
            return Route::NOT_FOUND;
        }
        let Some(template) = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) else {
            return Route::NOT_FOUND;
        };
        // axum answers HEAD with the GET route.
        let method = if request.method() == Method::HEAD { Method::GET } else { request.method().clone() };
        if let Some(route) = self.rest.get(&(method, template)) {
            return *route;
        }
        match OWN_ENDPOINTS.iter().find(|(t, _, _)| *t == template) {
            Some(&(label, access, rate_limit)) => Route { access, rate_limit, label, rpc: None },
            None => Route::UNDECLARED,
        }
    }
}

/// The outermost middleware: finds the request's [`Route`] in `routes`
/// (the gateway's are [`Routes::contract`]) once and leaves it on the
/// request for the layers below.
pub async fn classify(State(routes): State<&'static Routes>, mut request: Request, next: Next) -> Response {
    let route = routes.find(&request);
    request.extensions_mut().insert(route);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt as _;

    use super::*;

    /// The route `Routes::contract` finds for `method path`, with axum's
    /// matching of the REST templates and the gateway's own endpoints.
    async fn route(method: &str, path: &str) -> Route {
        let routes = Routes::contract();
        let mut router = Router::new();
        let mut templates: Vec<String> = routes.rest.keys().map(|(_, t)| (*t).to_owned()).collect();
        templates.extend(OWN_ENDPOINTS.iter().map(|(t, _, _)| (*t).to_owned()));
        // As the gateway routes its gRPC services.
        templates.extend(taskgate_proto::DESCRIPTOR_POOL.services().map(|s| format!("/{}/{{*rest}}", s.full_name())));
        templates.sort_unstable();
        templates.dedup();
        let found = std::sync::Arc::new(std::sync::Mutex::new(None));
        for template in templates {
            let found = found.clone();
            router = router.route(
                &template,
                axum::routing::any(move |request: Request| async move {
                    *found.lock().expect("not poisoned") = Some(Routes::contract().find(&request));
                }),
            );
        }
        let found_fallback = found.clone();
        let router = router.route("/unused", get(|| async {})).fallback(move |request: Request| async move {
            *found_fallback.lock().expect("not poisoned") = Some(Routes::contract().find(&request));
        });
        let request = http::Request::builder().method(method).uri(path).body(Body::empty()).expect("a request");
        router.oneshot(request).await.expect("infallible");
        found.lock().expect("not poisoned").take().expect("a route was classified")
    }

    #[tokio::test]
    async fn rest_routes_take_the_policy_of_their_rpc() {
        let login = route("POST", "/api/v1/auth/login").await;
        assert_eq!((login.access, login.rate_limit), (Access::Public, RateLimit::Caller));
        assert_eq!(login.rpc.map(|m| m.name()), Some("Login"));
        let refresh = route("POST", "/api/v1/auth/refresh").await;
        assert_eq!(refresh.rate_limit, RateLimit::RefreshTokenOwner);
        assert_eq!(route("POST", "/api/v1/auth/logout").await.access, Access::TokenOptional);
        assert_eq!(route("GET", "/.well-known/jwks.json").await.access, Access::Public);
        assert_eq!(route("HEAD", "/.well-known/jwks.json").await.access, Access::Public);
        let get = route("GET", "/api/v1/tasks/0193-abc").await;
        assert_eq!((get.access, get.label), (Access::TokenRequired, "/api/v1/tasks/{id}"));
        assert_eq!(get.rpc.map(|m| m.name()), Some("GetTask"));
        assert_eq!(route("PATCH", "/api/v1/tasks/x").await.rpc.map(|m| m.name()), Some("UpdateTask"));
        assert_eq!(route("GET", "/api/v1/tasks").await.label, "/api/v1/tasks");
        // A known path with a method no binding declares is closed.
        let wrong = route("GET", "/api/v1/auth/login").await;
        assert_eq!((wrong.access, wrong.label), (Access::TokenRequired, "other"));
    }

    #[tokio::test]
    async fn grpc_paths_take_the_policy_of_their_rpc() {
        let login = route("POST", "/taskgate.auth.v1.AuthService/Login").await;
        assert_eq!(login.access, Access::Public);
        assert_eq!(route("POST", "/taskgate.auth.v1.AuthService/GetJwks").await.access, Access::Public);
        let refresh = route("POST", "/taskgate.auth.v1.AuthService/Refresh").await;
        assert_eq!(refresh.rate_limit, RateLimit::RefreshTokenOwner);
        assert_eq!(route("POST", "/taskgate.auth.v1.AuthService/GetMe").await.access, Access::TokenRequired);
        assert_eq!(route("POST", "/taskgate.task.v1.TaskService/ListTasks").await.access, Access::TokenRequired);
        assert_eq!(route("POST", "/grpc.health.v1.Health/Check").await.access, Access::Public);
        let reflection = route("POST", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").await;
        assert_eq!(reflection.access, Access::Public);
        assert_eq!(route("POST", "/taskgate.task.v1.TaskService/Nope").await.access, Access::TokenRequired);
        assert_eq!(route("POST", "/taskgate.nope.v1.Nope/Nope").await.access, Access::Public);
    }

    #[tokio::test]
    async fn the_gateways_own_endpoints_are_public_and_probes_unlimited() {
        for path in ["/healthz", "/readyz"] {
            let probe = route("GET", path).await;
            assert_eq!((probe.access, probe.rate_limit, probe.label), (Access::Public, RateLimit::Exempt, path));
        }
        for (path, label) in [
            ("/openapi.json", "/openapi.json"),
            ("/docs/swagger-ui.css", "/docs/{file}"),
            ("/demo/a/b.js", "/demo/{*path}"),
        ] {
            let page = route("GET", path).await;
            assert_eq!((page.access, page.rate_limit, page.label), (Access::Public, RateLimit::Caller, label));
        }
        // Paths nothing serves are 404s for anyone.
        for path in ["/metrics", "/api/v1/nope", "/healthz/x"] {
            let unknown = route("GET", path).await;
            assert_eq!((unknown.access, unknown.label), (Access::Public, "other"), "{path}");
        }
    }
}
