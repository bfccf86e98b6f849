//! Request context and the HTTP edge: every response carries
//! `x-openstack-request-id` (the compute API's also as
//! `x-compute-request-id`, as in Nova), every request is logged once (method, path,
//! status, latency) and counted in the metrics (by route template, see
//! [`crate::metrics`]), and every error comes out in the service's own fault
//! shape, including those found before routing and the framework's own
//! rejections.
//!
//! Before routing, a request is held to the [`HttpLimits`]: its URI
//! length (414), its header fields (431), a path that is not UTF-8 once
//! percent-decoded (400) and a declared body over the limit (413). Bodies
//! are read through a limit too, so a chunked body over it is a 413 when a
//! handler buffers it. Image data (`PUT .../file`, `.../stage`) is bounded
//! by the image size cap instead.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Shape;
use crate::{ApiError, AppState, HttpLimits};

pub const REQUEST_ID: &str = "x-openstack-request-id";
/// Nova's own name for the request id, sent beside the common one.
pub const COMPUTE_REQUEST_ID: &str = "x-compute-request-id";

/// The id of the request being served (also in the response header).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The most bytes this request's body may have, when it has a limit (see
/// [`crate::json::Json`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// Marks a response to one of a node agent's routine calls (heartbeat,
/// long-poll, wiring poll, task reports): its request line is logged at
/// DEBUG when it succeeds, so a quiet cloud's log stays quiet.
#[derive(Debug, Clone, Copy)]
pub struct Routine;

/// The route layer that marks a route's responses [`Routine`].
pub async fn mark_routine(mut resp: Response) -> Response {
    resp.extensions_mut().insert(Routine);
    resp
}

/// A fresh request id, as OpenStack services make them.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// The outermost layer of every route: request id, limits, the framework's
/// rejections in the service's shape, and the access log line.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The route template, for the metrics (never the raw path).
    let route = req.extensions().get::<MatchedPath>().cloned();
    let shape = Shape::for_path(&path);
    let limits = &state.config.http;
    let mut routine = false;
    let mut resp = match check(&req, limits) {
        Err(err) => {
            tracing::info!(request_id = %id, %method, path, error = %err, "request refused before routing");
            shape.render(err, &id)
        }
        Ok(body_limit) => {
            if let Some(n) = body_limit {
                req.extensions_mut().insert(BodyLimit(n));
                let limit = usize::try_from(n).unwrap_or(usize::MAX);
                req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
            }
            let resp = next.run(req).await;
            routine = resp.extensions().get::<Routine>().is_some();
            reshape(resp, shape, &id, method == Method::HEAD, body_limit).await
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Nova also answers it under its older name.
        if path.starts_with("/compute") {
            resp.headers_mut().insert(COMPUTE_REQUEST_ID, v.clone());
        }
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    let took = started.elapsed();
    state.metrics.request(
        route.as_ref().map(|r| r.as_str()),
        method.as_str(),
        status,
        took,
    );
    let ms = took.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, path, status, latency_ms = ms, "request");
    } else if routine && status < 400 {
        tracing::debug!(request_id = %id, %method, path, status, latency_ms = ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, path, status, latency_ms = ms, "request");
    }
    resp
}

/// Holds a request to the limits; on success returns the limit its body
/// is read under (None: image data, bounded by the image size cap).
fn check(req: &Request, limits: &HttpLimits) -> Result<Option<u64>, ApiError> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            limits.uri_message(),
        ));
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > limits.max_header_count || header_bytes > limits.max_header_bytes {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            limits.header_message(),
        ));
    }
    let path = req.uri().path();
    if std::str::from_utf8(&percent_decode(path)).is_err() {
        return Err(ApiError::bad_request(
            "The request path is not valid UTF-8 once percent-decoded.",
        ));
    }
    let limit = body_limit(path, limits);
    if let Some(n) = limit {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|d| d > n) {
            return Err(too_large(n));
        }
    }
    Ok(limit)
}

/// The body limit for a path: none for image data (the image size cap
/// bounds it), the agent limit for the node agents' API, else the API's.
fn body_limit(path: &str, limits: &HttpLimits) -> Option<u64> {
    // The dashboard's proxy passes image data on to the image API, which
    // holds it to the cap.
    let path = path.strip_prefix("/dashboard/api").unwrap_or(path);
    let image_data = path
        .strip_prefix("/image/v2/images/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(id, what)| !id.is_empty() && (what == "file" || what == "stage"));
    if image_data {
        None
    } else if path.starts_with("/edge/") {
        Some(limits.max_agent_body_bytes)
    } else {
        Some(limits.max_body_bytes)
    }
}

/// The 413 for a body over `limit` bytes.
pub fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("The request body is larger than the {limit} bytes accepted."),
    )
}

/// Re-renders an error the framework answered itself (a path or query
/// that does not parse, a body over the limit: plain text) in the
/// service's shape; every other response passes unchanged.
async fn reshape(
    resp: Response,
    shape: Shape,
    id: &str,
    head: bool,
    body_limit: Option<u64>,
) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if status.as_u16() < 400 || json || head {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 8192).await.unwrap_or_default();
    let message = match (status, body_limit) {
        (StatusCode::PAYLOAD_TOO_LARGE, Some(n)) => too_large(n).message,
        _ => {
            let text = String::from_utf8_lossy(&text).trim().to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("Error").to_string()
            } else {
                text
            }
        }
    };
    let mut out = shape.render(ApiError::new(status, message), id);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !out.headers().contains_key(name)
        {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Percent-decodes a path to bytes (a malformed escape stays as it is).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_finds_invalid_utf8() {
        assert_eq!(percent_decode("/a%20b"), b"/a b");
        assert_eq!(percent_decode("/a%2"), b"/a%2");
        assert_eq!(percent_decode("/%e2%9c%93"), "/✓".as_bytes());
        assert!(std::str::from_utf8(&percent_decode("/servers/%C0%AF")).is_err());
    }

    #[tokio::test]
    async fn framework_rejections_take_the_services_shape() {
        use axum::response::IntoResponse;
        // What axum's Path extractor answers for a parameter of the wrong
        // type.
        let text = (StatusCode::BAD_REQUEST, "Invalid URL: Cannot parse `abc`").into_response();
        let r = reshape(text, Shape::Compute, "req-1", false, None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["badRequest"]["code"], 400);
        assert_eq!(
            v["badRequest"]["message"],
            "Invalid URL: Cannot parse `abc`"
        );

        let too_big = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        let r = reshape(too_big, Shape::Placement, "req-2", false, Some(10)).await;
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["status"], 413);
        assert_eq!(v["errors"][0]["request_id"], "req-2");
        assert_eq!(
            v["errors"][0]["detail"],
            "The request body is larger than the 10 bytes accepted."
        );

        // Answers of our own pass unchanged.
        let ours = ApiError::bad_request("x").into_response();
        let r = reshape(ours, Shape::Compute, "req-3", false, None).await;
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "x");
    }

    #[test]
    fn image_data_has_no_body_limit() {
        let l = HttpLimits::default();
        assert_eq!(body_limit("/image/v2/images/abc/file", &l), None);
        assert_eq!(body_limit("/image/v2/images/abc/stage", &l), None);
        assert_eq!(
            body_limit("/dashboard/api/image/v2/images/abc/file", &l),
            None
        );
        assert_eq!(body_limit("/image/v2/images", &l), Some(l.max_body_bytes));
        assert_eq!(
            body_limit("/edge/v1/nodes/n1", &l),
            Some(l.max_agent_body_bytes)
        );
    }
}
