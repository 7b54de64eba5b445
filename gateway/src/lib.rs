//! taskgate's gateway: the only thing clients talk to.
//!
//! # Layout
//! - [`rest`]: REST/JSON routes transcoded to the backends' gRPC APIs, the
//!   JSON error shape, OpenAPI document and docs page.
//!
//! (Being written: server start-up, gRPC/gRPC-web proxying, authentication,
//! rate limiting, metrics.)

pub mod rest;
