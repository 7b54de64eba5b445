//! `GET /docs`: Swagger UI over `/openapi.json`, served from files vendored
//! in `gateway/static/swagger/` and compiled into the binary, so the page
//! works without internet access.

use axum::{
    extract::{Path, rejection::PathRejection},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use tonic::Status;

use crate::rest::error::RestError;

/// One embedded file: name under `/docs/`, content type, bytes.
struct Asset {
    /// The file name, as requested under `/docs/`.
    name: &'static str,
    /// The `content-type` it is served with.
    content_type: &'static str,
    /// The file itself.
    bytes: &'static [u8],
}

/// The page at `/docs`.
const INDEX: &[u8] = include_bytes!("../../static/swagger/index.html");

/// Everything the page loads, from the `swagger-ui-dist` npm package plus
/// taskgate's initializer.
const ASSETS: &[Asset] = &[
    Asset {
        name: "swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../static/swagger/swagger-ui.css"),
    },
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../static/swagger/swagger-ui-bundle.js"),
    },
    Asset {
        name: "swagger-initializer.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../static/swagger/swagger-initializer.js"),
    },
    Asset {
        name: "favicon-32x32.png",
        content_type: "image/png",
        bytes: include_bytes!("../../static/swagger/favicon-32x32.png"),
    },
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", bytes: INDEX },
];

/// An embedded file as a response; assets may be cached for a day, the page
/// itself is revalidated so an upgrade shows at once.
fn serve(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// What the page may load: only itself and the gateway's own files and API.
/// Swagger UI sets inline styles and uses `data:` images, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /docs`: the Swagger UI page.
pub async fn index() -> Response {
    let mut response = serve("text/html; charset=utf-8", INDEX, "no-cache");
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

/// `GET /docs/{file}`: one of the page's assets, or a JSON 404.
pub async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let name = file.map(|Path(name)| name).unwrap_or_default();
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset.content_type, asset.bytes, "public, max-age=86400"),
        None => RestError::with_http(StatusCode::NOT_FOUND, Status::not_found(format!("no file /docs/{name}")))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files_and_the_local_document() {
        let page = std::str::from_utf8(INDEX).expect("utf-8 html");
        for reference in page.split(['"', '\'']).filter(|s| s.starts_with("/docs/")) {
            let name = reference.trim_start_matches("/docs/");
            assert!(ASSETS.iter().any(|a| a.name == name), "index.html loads {reference}, which is not embedded");
        }
        assert!(!page.contains("http://") && !page.contains("https://"), "the page must not need the internet");
        let init = ASSETS.iter().find(|a| a.name == "swagger-initializer.js").expect("initializer embedded");
        assert!(std::str::from_utf8(init.bytes).expect("utf-8 js").contains("\"/openapi.json\""));
    }
}
