//! Request context: every response carries `x-openstack-request-id`, and
//! every request is logged once, with method, path, status and latency.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const REQUEST_ID: &str = "x-openstack-request-id";

/// The id of the request being served (also in the response header).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = format!("req-{}", uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, path, status, latency_ms = ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, path, status, latency_ms = ms, "request");
    }
    resp
}
