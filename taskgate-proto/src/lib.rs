//! Generated gRPC code for taskgate's API contract in `proto/`.
//!
//! # Layout
//! - [`auth::v1`]: `taskgate.auth.v1` messages, `AuthService` client and server.
//! - [`task::v1`]: `taskgate.task.v1` messages, `TaskService` client and server.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set, for server reflection.
//! - [`HTTP_RULES`]: the `google.api.http` REST bindings declared on each RPC
//!   ([`http_rules`] reads them from any pool, a test's own protos included).
//! - [`DESCRIPTOR_POOL`]: the same descriptors, decoded; every taskgate message
//!   implements `prost_reflect::ReflectMessage` over it, which is how the
//!   services' validator reads the `buf.validate` rules.
//! - [`auth::v1::rules`], [`task::v1::rules`]: the limits declared with
//!   `buf.validate` annotations, as constants for the services' domain types.
//! - [`contract`]: readers the REST transcoder, the OpenAPI generator and the
//!   gateway's route policy share (path templates, field paths and
//!   behaviour, REST names of enum values).
//! - [`api::v1`]: the `taskgate.api.v1.policy` and `taskgate.api.v1.rest`
//!   method options; [`policy`] and [`rest`] read them from a method's
//!   descriptor.

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

pub mod contract;

/// The `taskgate.api.*` packages: options the contract annotates itself with.
pub mod api {
    /// The `taskgate.api.v1` package: the route [`Policy`](v1::Policy) option.
    pub mod v1 {
        tonic::include_proto!("taskgate.api.v1");
    }
}

/// The `taskgate.auth.*` packages.
pub mod auth {
    /// The `taskgate.auth.v1` package.
    pub mod v1 {
        tonic::include_proto!("taskgate.auth.v1");

        /// The numeric and pattern rules of the `buf.validate` annotations in
        /// `taskgate/auth/v1/auth.proto`, named `MESSAGE_FIELD_RULE`.
        pub mod rules {
            include!(concat!(env!("OUT_DIR"), "/rules.taskgate.auth.v1.rs"));
        }
    }
}

/// The `taskgate.task.*` packages.
pub mod task {
    /// The `taskgate.task.v1` package.
    pub mod v1 {
        tonic::include_proto!("taskgate.task.v1");

        /// The numeric and pattern rules of the `buf.validate` annotations in
        /// `taskgate/task/v1/task.proto`, named `MESSAGE_FIELD_RULE`.
        pub mod rules {
            include!(concat!(env!("OUT_DIR"), "/rules.taskgate.task.v1.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every proto file (with imports), for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskgate_descriptor");

/// [`FILE_DESCRIPTOR_SET`] decoded, once.
pub static DESCRIPTOR_POOL: std::sync::LazyLock<prost_reflect::DescriptorPool> = std::sync::LazyLock::new(|| {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built with this crate decodes")
});

/// The `taskgate.api.v1.policy` option of `method`, from whatever pool it
/// belongs to (a test's own protos included); the default (all fields
/// unspecified, read as token required and charged to the caller) when the
/// method declares none or its pool does not know the option.
pub fn policy(method: &prost_reflect::MethodDescriptor) -> api::v1::Policy {
    method_option(method, "taskgate.api.v1.policy")
}

/// The method option `name` of `method` as `T`; the default when the method
/// declares none or its pool does not know the option.
fn method_option<T: prost::Message + Default>(method: &prost_reflect::MethodDescriptor, name: &str) -> T {
    let Some(extension) = method.parent_pool().get_extension_by_name(name) else {
        return T::default();
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return T::default();
    }
    match options.get_extension(&extension).as_message() {
        Some(message) => message.transcode_to().unwrap_or_default(),
        None => T::default(),
    }
}

/// One REST binding declared with a `google.api.http` annotation (the rule
/// itself or one of its `additional_bindings`), read from a descriptor pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// The full service name, such as `taskgate.task.v1.TaskService`.
    pub service: String,
    /// The RPC name, such as `ListTasks`.
    pub method: String,
    /// The HTTP method in upper case.
    pub verb: &'static str,
    /// The path template, with `{field}` variables.
    pub path: String,
    /// The request field the body maps to (`*` for the whole request), or empty.
    pub body: String,
    /// The response field that is the HTTP body, or empty for the whole response.
    pub response_body: String,
    /// The RPC.
    pub descriptor: prost_reflect::MethodDescriptor,
}

/// Every `google.api.http` binding of the services in `pool` (additional
/// bindings included), in declaration order. A rule with a verb this
/// reader does not know (`custom`) is left out.
pub fn http_rules(pool: &prost_reflect::DescriptorPool) -> Vec<HttpRule> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for method in pool.services().flat_map(|s| s.methods().collect::<Vec<_>>()) {
        let options = method.options();
        if !options.has_extension(&extension) {
            continue;
        }
        let Some(rule) = options.get_extension(&extension).as_message().cloned() else { continue };
        let additional = match rule.get_field_by_name("additional_bindings").as_deref() {
            Some(prost_reflect::Value::List(more)) => more.iter().filter_map(|r| r.as_message().cloned()).collect(),
            _ => Vec::new(),
        };
        for r in std::iter::once(rule).chain(additional) {
            let text = |name: &str| r.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned));
            let verbs = [("get", "GET"), ("put", "PUT"), ("post", "POST"), ("delete", "DELETE"), ("patch", "PATCH")];
            let Some((verb, path)) = verbs.iter().find_map(|(field, verb)| {
                let present = prost_reflect::ReflectMessage::descriptor(&r)
                    .get_field_by_name(field)
                    .is_some_and(|f| r.has_field(&f));
                present.then(|| (*verb, text(field).unwrap_or_default()))
            }) else {
                continue;
            };
            rules.push(HttpRule {
                service: method.parent_service().full_name().to_owned(),
                method: method.name().to_owned(),
                verb,
                path,
                body: text("body").unwrap_or_default(),
                response_body: text("response_body").unwrap_or_default(),
                descriptor: method.clone(),
            });
        }
    }
    rules
}

/// Every `google.api.http` binding in the contract, in declaration order.
pub static HTTP_RULES: std::sync::LazyLock<Vec<HttpRule>> = std::sync::LazyLock::new(|| http_rules(&DESCRIPTOR_POOL));

/// The `taskgate.api.v1.rest` option of `method` (its REST-only behaviour),
/// or the default when it declares none or its pool lacks the option.
pub fn rest(method: &prost_reflect::MethodDescriptor) -> api::v1::Rest {
    method_option(method, "taskgate.api.v1.rest")
}

/// The names services register with grpc.health.v1 and reflection.
pub mod service_names {
    /// `taskgate.auth.v1.AuthService`.
    pub const AUTH: &str = "taskgate.auth.v1.AuthService";
    /// `taskgate.task.v1.TaskService`.
    pub const TASK: &str = "taskgate.task.v1.TaskService";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_a_rest_binding() {
        let methods = [
            "Register",
            "Login",
            "Refresh",
            "Logout",
            "LogoutAll",
            "GetMe",
            "ListSessions",
            "RevokeSession",
            "GetJwks",
            "DisableUser",
            "CreateTask",
            "GetTask",
            "ListTasks",
            "UpdateTask",
            "DeleteTask",
        ];
        for m in methods {
            assert!(HTTP_RULES.iter().any(|r| r.method == m), "no google.api.http on {m}");
        }
        let patch = HTTP_RULES.iter().find(|r| r.verb == "PATCH").expect("PATCH binding");
        assert_eq!(patch.method, "UpdateTask");
        assert_eq!(patch.path, "/api/v1/tasks/{task.id}");
    }

    #[test]
    fn every_rpc_declares_its_policy() {
        use api::v1::{Access, RateLimit};
        let pool = &*DESCRIPTOR_POOL;
        let mut seen = 0;
        for service in pool.services().filter(|s| s.full_name().starts_with("taskgate.")) {
            for method in service.methods() {
                let p = policy(&method);
                assert_ne!(p.access(), Access::Unspecified, "{} declares no access", method.full_name());
                assert_ne!(p.rate_limit(), RateLimit::Unspecified, "{} declares no rate limit", method.full_name());
                seen += 1;
            }
        }
        assert!(seen >= 18, "only {seen} methods");
        let login =
            pool.get_service_by_name(service_names::AUTH).and_then(|s| s.methods().find(|m| m.name() == "Login"));
        assert_eq!(policy(&login.expect("Login")).access(), Access::Public);
        let refresh =
            pool.get_service_by_name(service_names::AUTH).and_then(|s| s.methods().find(|m| m.name() == "Refresh"));
        assert_eq!(policy(&refresh.expect("Refresh")).rate_limit(), RateLimit::RefreshTokenOwner);
    }

    #[test]
    fn descriptor_set_is_not_empty() {
        assert!(FILE_DESCRIPTOR_SET.len() > 1000);
    }
}
