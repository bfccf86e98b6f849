//! `GET /resource_filters` (3.33): the filter keys each list honours.
//!
//! Unlike Cinder's (a configuration file), this table describes what
//! the list handlers here actually match on; a change to a list's
//! filters must change its row. As in Cinder, the lists enforce it for
//! non-admins from 3.31 (`filters::reject_invalid`), and a `key~` entry
//! says that the list takes a like filter on `key` (3.34). Paging and
//! sorting keys (`limit`, `marker`, `offset`, `sort`, `with_count`) and
//! `all_tenants` are not filters and are not listed.

use std::collections::HashMap;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use serde_json::{Value, json};

use super::{Mv, VCtx};
use crate::{ApiError, AppState};

/// Resource -> the filters its list matches (`project_id` only for
/// admins listing all projects).
pub(crate) const FILTERS: &[(&str, &[&str])] = &[
    (
        "volume",
        &[
            "name",
            "name~",
            "status",
            "status~",
            "metadata",
            "bootable",
            "migration_status",
            "availability_zone",
            "size",
            "volume_type",
            "project_id",
            "description",
            "description~",
            "glance_metadata",
            "group_id",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "snapshot",
        &[
            "name",
            "name~",
            "status",
            "status~",
            "volume_id",
            "project_id",
            "metadata",
        ],
    ),
    ("backup", &["name", "status", "volume_id", "project_id"]),
    ("transfer", &["name", "volume_id"]),
    (
        "attachment",
        &["volume_id", "status", "instance_id", "attach_status", "id"],
    ),
    (
        "message",
        &[
            "resource_uuid",
            "resource_type",
            "event_id",
            "request_id",
            "message_level",
        ],
    ),
    (
        "group",
        &[
            "name",
            "name~",
            "status",
            "status~",
            "group_type",
            "availability_zone",
            "project_id",
        ],
    ),
    (
        "group_snapshot",
        &[
            "name",
            "name~",
            "status",
            "status~",
            "group_id",
            "project_id",
        ],
    ),
    ("pool", &["name", "volume_type"]),
];

pub fn routes() -> Router<AppState> {
    Router::new().route("/resource_filters", get(list))
}

async fn list(
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    mv.require(33)?;
    ctx.project()?;
    let want = q.get("resource");
    let out: Vec<Value> = FILTERS
        .iter()
        .filter(|(r, _)| want.is_none_or(|w| w == r))
        .map(|(r, f)| json!({"resource": r, "filters": f}))
        .collect();
    Ok(axum::Json(json!({"resource_filters": out})))
}
