//! `/limits`, `/os-availability-zone` and `/os-services`: what a project
//! may still use, the zones volumes can be made in (those of the storage
//! nodes), and the volume services (admins only).
//!
//! Microversions: 3.7 `cluster` (always null: no clustered services)
//! and 3.49 `backend_state` of each `cinder-volume` in `os-services`;
//! 3.39 `/limits?project_id=` for admins (ignored for others, as
//! Cinder does).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::service::{capacities, limits as quota_limits, usage};
use super::{Mv, VCtx, blocking, ts};
use crate::{ApiError, AppState};

type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/limits", get(limits))
        .route("/os-availability-zone", get(zones))
        .route("/os-services", get(services))
}

async fn limits(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> J {
    let own = ctx.project()?.to_string();
    let project = match q.get("project_id").or(q.get("tenant_id")) {
        Some(p) if mv.at_least(39) && ctx.is_admin() && !p.is_empty() => p.clone(),
        _ => own,
    };
    blocking(move || {
        let (lim, used) = state.store.write(|tx| {
            Ok::<_, ApiError>((quota_limits(tx, Some(&project))?, usage(tx, &project)?))
        })?;
        let l = |k: &str| lim.get(k).copied().unwrap_or(-1);
        let u = |k: &str| used.get(k).copied().unwrap_or(0);
        Ok(axum::Json(json!({"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": l("volumes"),
            "maxTotalSnapshots": l("snapshots"),
            "maxTotalVolumeGigabytes": l("gigabytes"),
            "maxTotalBackups": l("backups"),
            "maxTotalBackupGigabytes": l("backup_gigabytes"),
            "totalVolumesUsed": u("volumes"),
            "totalSnapshotsUsed": u("snapshots"),
            "totalGigabytesUsed": u("gigabytes"),
            "totalBackupsUsed": u("backups"),
            "totalBackupGigabytesUsed": u("backup_gigabytes"),
        }}})))
    })
    .await
}

async fn zones(State(state): State<AppState>, _ctx: VCtx) -> J {
    blocking(move || {
        let caps = state.store.write(|tx| capacities(&state, tx))?;
        let mut zones: Vec<(String, bool)> = Vec::new();
        for c in caps {
            let up = c.up && !c.node.disabled;
            match zones.iter_mut().find(|(z, _)| *z == c.zone) {
                Some(z) => z.1 |= up,
                None => zones.push((c.zone, up)),
            }
        }
        zones.sort();
        let info: Vec<Value> = zones
            .into_iter()
            .map(|(z, up)| json!({"zoneName": z, "zoneState": {"available": up}}))
            .collect();
        Ok(axum::Json(json!({"availabilityZoneInfo": info})))
    })
    .await
}

async fn services(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> J {
    ctx.admin("volume_extension:services:index")?;
    blocking(move || {
        let caps = state.store.write(|tx| capacities(&state, tx))?;
        let seen = state.store.liveness(super::model::StorageNode::KIND_NAME)?;
        let now = ts(crate::timeutil::now_us());
        let mut out = vec![json!({
            "binary": "cinder-scheduler",
            "host": crate::compute::zones::controller_host(),
            "zone": crate::compute::zones::DEFAULT_ZONE,
            "status": "enabled",
            "state": "up",
            "updated_at": now,
            "disabled_reason": null,
        })];
        // Backups are kept by the controller itself (see `chunks.rs`).
        out.push(json!({
            "binary": "cinder-backup",
            "host": crate::compute::zones::controller_host(),
            "zone": crate::compute::zones::DEFAULT_ZONE,
            "status": "enabled",
            "state": "up",
            "updated_at": now,
            "disabled_reason": null,
        }));
        for c in caps {
            let mut row = json!({
                "binary": "cinder-volume",
                "host": c.node.service_host(),
                "zone": c.zone,
                "status": if c.node.disabled { "disabled" } else { "enabled" },
                "state": if c.up { "up" } else { "down" },
                "updated_at": seen.get(&c.node.id).map(|t| ts(*t)),
                "disabled_reason": c.node.disabled_reason,
                "replication_status": "disabled",
                "frozen": false,
                "active_backend_id": null,
            });
            if mv.at_least(49) {
                row["backend_state"] = json!(if c.up { "up" } else { "down" });
            }
            out.push(row);
        }
        if mv.at_least(7) {
            for s in &mut out {
                s["cluster"] = Value::Null;
            }
        }
        // Filters: `binary`, and `host` (the whole name or the node's).
        out.retain(|s| {
            q.get("binary").is_none_or(|b| s["binary"] == b.as_str())
                && q.get("host").is_none_or(|h| {
                    super::hosts::host_matches(s["host"].as_str().unwrap_or_default(), h)
                })
        });
        Ok(axum::Json(json!({"services": out})))
    })
    .await
}
