//! Our own JSON extractor: a malformed or wrongly typed body comes back as
//! a 400 in the service's fault shape naming what was wrong, never as the
//! framework's plain-text rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON request body decoded into `T`.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_ascii_lowercase());
        if let Some(ct) = &ctype
            && !ct.contains("json")
        {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ct} is not supported; send application/json."),
            ));
        }
        let limit = req
            .extensions()
            .get::<crate::middleware::BodyLimit>()
            .copied();
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|e| match (e.status(), limit) {
                    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, Some(l)) => {
                        crate::middleware::too_large(l.0)
                    }
                    (status @ axum::http::StatusCode::PAYLOAD_TOO_LARGE, None) => {
                        ApiError::new(status, "The request body is too large.")
                    }
                    _ => ApiError::bad_request(format!("Could not read the request body: {e}")),
                })?;
        decode(&bytes).map(Json)
    }
}

/// Decodes a body, turning serde's message into an OpenStack-style 400.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "Expecting to find a JSON request body, but the body is empty.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "Malformed JSON in request body"
        } else {
            "Invalid input for field/attribute"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}
