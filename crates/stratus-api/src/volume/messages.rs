//! User messages (3.3; paging 3.5): `/messages`.
//!
//! When a request that was accepted fails later (no storage node could
//! take a volume, a node could not make, extend or snapshot it), Cinder
//! leaves the project a message saying which action failed and why, in
//! fixed words that tell nothing of the backend's insides. The driver's
//! own error is logged and kept on the record (`fault`) for operators.
//! Messages are records of the project; they last 30 days (Cinder's
//! `message_ttl`), and the project's members may read and delete them.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Record, Tx};

use super::{Mv, VCtx, blocking, not_found, param, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

/// How long a message is kept: Cinder's `message_ttl` (30 days).
const TTL_US: i64 = 30 * 24 * 3600 * 1_000_000;

/// One message to a project about one of its resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeMessage {
    pub id: String,
    pub project_id: String,
    pub request_id: String,
    /// `VOLUME`, `VOLUME_SNAPSHOT`, ...
    pub resource_type: String,
    #[serde(default)]
    pub resource_uuid: Option<String>,
    pub action_id: String,
    pub detail_id: String,
    pub message_level: String,
    pub created_us: i64,
}

record!(
    VolumeMessage,
    "volume_message",
    owner = |m| Some(&m.project_id),
    created = |m| Some(m.created_us)
);

/// What failed: Cinder's message actions (`message_field.Action`), with
/// the detail each gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// No storage node could take the volume.
    ScheduleAllocate,
    /// A volume from an image could not be made.
    CopyImageToVolume,
    /// A volume (empty, or from a snapshot or volume) could not be made.
    CreateFromBackend,
    Extend,
    SnapshotCreate,
    SnapshotDelete,
    /// Reimage (3.68).
    Reimage,
    /// Revert to a snapshot (3.40): no Cinder action id exists for it;
    /// Stratus uses the next free one.
    Revert,
}

impl Event {
    /// (action id, action words, detail id).
    fn ids(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Event::ScheduleAllocate => ("001", "schedule allocate volume", "003"),
            Event::CopyImageToVolume => ("005", "copy image to volume", "001"),
            Event::CreateFromBackend => ("008", "create volume from backend storage", "001"),
            Event::Extend => ("007", "extend volume", "001"),
            Event::SnapshotCreate => ("009", "create snapshot", "001"),
            Event::SnapshotDelete => ("010", "delete snapshot", "001"),
            Event::Reimage => ("016", "reimage volume", "001"),
            Event::Revert => ("017", "revert volume to snapshot", "001"),
        }
    }
}

fn action_words(id: &str) -> &'static str {
    [
        Event::ScheduleAllocate,
        Event::CopyImageToVolume,
        Event::CreateFromBackend,
        Event::Extend,
        Event::SnapshotCreate,
        Event::SnapshotDelete,
        Event::Reimage,
        Event::Revert,
    ]
    .into_iter()
    .map(Event::ids)
    .find(|(a, _, _)| *a == id)
    .map(|(_, w, _)| w)
    .unwrap_or("unknown action")
}

fn detail_words(id: &str) -> &'static str {
    match id {
        "003" => "Could not find any available weighted backend.",
        _ => "An unknown error occurred.",
    }
}

/// Leaves `project` a message that `event` failed for a resource, in the
/// same write as the failure; the driver's words go to the log only.
pub fn record_tx(
    tx: &Tx,
    project: &str,
    resource_type: &str,
    resource_uuid: &str,
    event: Event,
    error: Option<&str>,
) -> Result<(), ApiError> {
    let (action_id, _, detail_id) = event.ids();
    let now = now_us();
    tracing::info!(
        resource = resource_uuid,
        ?event,
        error = error.unwrap_or(""),
        "user message recorded"
    );
    // Messages past their time go as new ones come.
    for old in tx.list::<VolumeMessage>(&StoreQuery::owner(project))? {
        if now - old.created_us > TTL_US {
            tx.delete::<VolumeMessage>(&old.id)?;
        }
    }
    tx.insert(&VolumeMessage {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_string(),
        request_id: format!("req-{}", uuid::Uuid::new_v4()),
        resource_type: resource_type.to_string(),
        resource_uuid: Some(resource_uuid.to_string()),
        action_id: action_id.to_string(),
        detail_id: detail_id.to_string(),
        message_level: "ERROR".into(),
        created_us: now,
    })?;
    Ok(())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/messages", get(list))
        .route("/messages/{id}", get(show).delete(delete))
}

fn render(state: &AppState, m: &VolumeMessage) -> Value {
    let base = &state.config.public_url;
    json!({
        "id": m.id,
        "event_id": format!("VOLUME_{}_{}_{}", m.resource_type, m.action_id, m.detail_id),
        "user_message": format!("{}: {}", action_words(&m.action_id), detail_words(&m.detail_id)),
        "message_level": m.message_level,
        "resource_type": m.resource_type,
        "resource_uuid": m.resource_uuid,
        "request_id": m.request_id,
        "created_at": ts(m.created_us),
        "guaranteed_until": ts(m.created_us + TTL_US),
        "links": [
            {"rel": "self", "href": format!("{base}/volume/v3/{}/messages/{}", m.project_id, m.id)},
            {"rel": "bookmark", "href": format!("{base}/volume/{}/messages/{}", m.project_id, m.id)}
        ],
    })
}

/// A live message the caller may see, or Cinder's 404.
fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<VolumeMessage, ApiError> {
    tx.get::<VolumeMessage>(id)?
        .filter(|m| ctx.owns(&m.project_id) && now_us() - m.created_us <= TTL_US)
        .ok_or_else(|| not_found("Message", id))
}

async fn list(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    mv.require(3)?;
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "message", &[])?;
    // Paging and sorting came with 3.5.
    let paging = if mv.at_least(5) {
        Some(super::paging(&q)?)
    } else {
        None
    };
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if ctx.is_admin() {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let now = now_us();
        let mut items = Vec::new();
        for m in state.store.list::<VolumeMessage>(&query)? {
            if now - m.created_us > TTL_US {
                continue;
            }
            let v = render(&state, &m);
            let unmatched = [
                "resource_type",
                "resource_uuid",
                "event_id",
                "message_level",
                "request_id",
            ]
            .iter()
            .any(|k| {
                q.get(*k)
                    .is_some_and(|want| v[*k].as_str() != Some(want.as_str()))
            });
            if !unmatched {
                items.push(v);
            }
        }
        let items = match &paging {
            Some(p) => super::page(items, p)?,
            None => super::page(items, &super::paging(&HashMap::new())?)?,
        };
        let links = paging
            .as_ref()
            .and_then(|p| super::next_links(&state, &own, "messages", &items, p));
        let mut out = json!({"messages": items});
        if let Some(l) = links {
            out["messages_links"] = l;
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(3)?;
    blocking(move || {
        let m = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"message": render(&state, &m)})))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    mv.require(3)?;
    blocking(move || {
        state.store.write(|tx| {
            let m = find(tx, &ctx, &param(&p, "id"))?;
            tx.delete::<VolumeMessage>(&m.id)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
