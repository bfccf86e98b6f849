//! `POST /workers/cleanup` (3.24, admins): Cinder asks its volume
//! services to clean up what a crashed service left mid-operation.
//!
//! Stratus needs no such call: a storage node re-runs its pending task
//! after a restart and a task whose report never arrives is run again
//! (see `docs/block-storage.md`, crash safety), so nothing is started
//! here and `cleaning` is always empty. `unavailable` lists the storage
//! nodes (`cinder-volume` services) the filters select that are down:
//! those are the services Cinder could not ask either.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

use super::hosts::host_matches;
use super::service::capacities;
use super::{Mv, VCtx, blocking, body, parse_bool};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/workers/cleanup", post(cleanup))
}

/// The resources a cleanup may name (Cinder's).
const RESOURCE_TYPES: &[&str] = &["Volume", "Snapshot"];

/// What a cleanup asks for: Cinder's filters, checked as its schema
/// does (unknown keys and wrong types are a 400).
#[derive(Default)]
struct Filters {
    host: Option<String>,
    binary: Option<String>,
    is_up: Option<bool>,
    disabled: Option<bool>,
    cluster_name: Option<String>,
}

fn filters(raw: &[u8]) -> Result<Filters, ApiError> {
    let mut f = Filters::default();
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(f);
    }
    let b = body(raw)?;
    let Some(o) = b.as_object() else {
        return Err(ApiError::bad_request(
            "Malformed request body: the cleanup filters must be an object.",
        ));
    };
    let bad = |k: &str, v: &Value| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {k}. Value: {v}."
        ))
    };
    // A null is as good as absent (openstacksdk sends every key).
    for (k, v) in o.iter().filter(|(_, v)| !v.is_null()) {
        let text = || v.as_str().map(str::to_string).ok_or_else(|| bad(k, v));
        let flag = || parse_bool(v).ok_or_else(|| bad(k, v));
        match k.as_str() {
            "host" => f.host = Some(text()?),
            "binary" => f.binary = Some(text()?),
            "cluster_name" => f.cluster_name = Some(text()?),
            "is_up" => f.is_up = Some(flag()?),
            "disabled" => f.disabled = Some(flag()?),
            "service_id" => {
                v.as_u64().ok_or_else(|| bad(k, v))?;
            }
            "resource_id" => {
                let s = text()?;
                uuid::Uuid::parse_str(&s).map_err(|_| bad(k, v))?;
            }
            "resource_type" => {
                let s = text()?;
                if !RESOURCE_TYPES.contains(&s.as_str()) {
                    return Err(bad(k, v));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute cleanup. Additional properties are not allowed ('{other}' was unexpected)"
                )));
            }
        }
    }
    Ok(f)
}

async fn cleanup(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    mv.require(24)?;
    ctx.admin("workers:cleanup")?;
    let f = filters(&raw)?;
    blocking(move || {
        let caps = state.store.write(|tx| capacities(&state, tx))?;
        let unavailable: Vec<Value> = caps
            .into_iter()
            .map(|c| (c.node.service_host(), c))
            .filter(|(host, c)| {
                !c.up
                    // No clusters: a cluster filter selects nothing.
                    && f.cluster_name.is_none()
                    && f.binary.as_deref().is_none_or(|b| b == "cinder-volume")
                    && f.host.as_deref().is_none_or(|h| host_matches(host, h))
                    && f.is_up.is_none_or(|u| !u)
                    && f.disabled.is_none_or(|d| d == c.node.disabled)
            })
            .map(|(host, _)| {
                json!({"id": null, "host": host, "binary": "cinder-volume", "cluster_name": null})
            })
            .collect();
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"cleaning": [], "unavailable": unavailable})),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_filters_are_checked_as_cinders_schema() {
        assert!(filters(b"").is_ok());
        let f = filters(br#"{"host": "n1@file", "is_up": "false", "binary": null}"#).unwrap();
        assert_eq!(f.host.as_deref(), Some("n1@file"));
        assert_eq!(f.is_up, Some(false));
        assert!(f.binary.is_none());
        assert!(filters(br#"{"colour": "red"}"#).is_err());
        assert!(filters(br#"{"is_up": "sideways"}"#).is_err());
        assert!(filters(br#"{"resource_id": "not-a-uuid"}"#).is_err());
        assert!(filters(br#"{"resource_type": "Volume"}"#).is_ok());
        assert!(filters(br#"{"resource_type": "Server"}"#).is_err());
        assert!(filters(br#"{"service_id": "7"}"#).is_err());
        assert!(filters(b"[1]").is_err());
    }
}
