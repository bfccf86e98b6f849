//! One API error type for every service.
//!
//! Handlers return `Result<_, ApiError>` and use `?` on store and service
//! errors. The body follows the service's own fault shape; identity uses
//! Keystone's `{"error": {"code", "title", "message"}}`; a service with
//! another shape re-renders the error from the response's extensions.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stratus_store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// The one 401 Keystone answers for every authentication failure, so a
    /// caller cannot tell an unknown user from a wrong password.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    }
    pub fn unauthorized_msg(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(action: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("You are not authorized to perform the requested action: {action}."),
        )
    }
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("Could not find {kind}: {id}."),
        )
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => ApiError::not_found(&kind.replace('_', " "), &id),
            StoreError::Conflict(msg) => {
                ApiError::conflict(format!("Conflict occurred attempting to store {msg}."))
            }
            StoreError::Unavailable(msg) => {
                tracing::error!(error = %msg, "the database is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is temporarily unavailable: its database cannot be reached.",
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::internal(
                    "An unexpected error prevented the server from fulfilling your request.",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::json!({
            "error": {"code": self.status.as_u16(), "title": title, "message": self.message}
        });
        let status = self.status;
        let mut resp = (status, axum::Json(body)).into_response();
        // Services with another fault shape re-render from this (see
        // `image::fault_shape`).
        resp.extensions_mut().insert(self);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Keystone uri=\"/identity\""),
            );
        }
        resp
    }
}

/// Answer for paths no service claims.
pub async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("The resource could not be found: {}", uri.path()),
    )
}

/// Answer for a known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method specified is not allowed for the requested URL.",
    )
}

/// The fault of Nova and Cinder (their `wsgi.Fault` names):
/// `{"itemNotFound": {"code": 404, "message": "..."}}`, with Keystone's
/// `WWW-Authenticate` on a 401; any status not listed is a
/// `computeFault`. The caller stamps its microversion headers.
pub fn wsgi_fault(err: ApiError) -> Response {
    let name = match err.status.as_u16() {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        405 => "badMethod",
        406 => "notAcceptable",
        409 => "conflictingRequest",
        413 => "overLimit",
        415 => "badMediaType",
        501 => "notImplemented",
        503 => "serviceUnavailable",
        _ => "computeFault",
    };
    let body = serde_json::json!({ name: {"code": err.status.as_u16(), "message": err.message} });
    let mut resp = (err.status, axum::Json(body)).into_response();
    if err.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Keystone uri=\"/identity\""),
        );
    }
    resp
}

/// Whose fault shape an answer takes, from the first segment of its path:
/// errors found before routing (at the HTTP edge) are rendered with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Keystone's `{"error": {...}}` (also the agent API and unknown paths).
    Identity,
    /// Nova's `{"badRequest": {...}}` and friends.
    Compute,
    /// Glance's `{"code": "400 Bad Request", ...}`.
    Image,
    /// Placement's `{"errors": [...]}`.
    Placement,
    /// Neutron's `{"NeutronError": {"type", "message", "detail"}}`.
    Network,
    /// Cinder's `{"badRequest": {...}}` and friends.
    Volume,
    /// `/edge/v1` and paths no service claims: Keystone's shape.
    Other,
}

impl Shape {
    /// The shape for a request path (`/compute/v2.1/servers` -> Compute).
    pub fn for_path(path: &str) -> Shape {
        match path.trim_start_matches('/').split('/').next() {
            Some("identity") => Shape::Identity,
            Some("compute") => Shape::Compute,
            Some("image") => Shape::Image,
            Some("placement") => Shape::Placement,
            Some("network") => Shape::Network,
            Some("volume") => Shape::Volume,
            _ => Shape::Other,
        }
    }

    /// Renders `err` in this shape, with the request id header.
    pub fn render(self, err: ApiError, request_id: &str) -> Response {
        let mut resp = match self {
            Shape::Compute => crate::compute::fault_response(err),
            Shape::Image => crate::image::fault_response(err),
            Shape::Placement => crate::placement::fault_response(err, request_id),
            Shape::Network => crate::network::fault_response(err),
            Shape::Volume => crate::volume::fault_response(err),
            Shape::Identity | Shape::Other => err.into_response(),
        };
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert(crate::middleware::REQUEST_ID, v);
        }
        resp
    }
}
