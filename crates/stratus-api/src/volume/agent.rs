//! The storage nodes' side of the agent API (`/edge/v1/storage`): a node
//! registers with its capacity (which is also its heartbeat), long-polls
//! the tasks pending on its volumes and snapshots, and reports each one
//! done (see `stratus_wire::volume`).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use stratus_store::Query as StoreQuery;
use stratus_wire::volume::{StorageReport, VolumeReport, VolumeWork, VolumeWorkList};

use super::model::{Snapshot, StorageNode, Volume};
use super::{blocking, service};
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/storage/{host}", put(register))
        .route("/edge/v1/storage/{host}/work", get(work))
        .route("/edge/v1/storage/{host}/work/{id}/report", post(report))
}

/// The agent of `host` (its own node identity), or an admin/service user.
fn require_agent(ctx: &Ctx, host: &str) -> Result<(), ApiError> {
    match ctx.node_host() {
        Some(h) if h == host => Ok(()),
        Some(_) => Err(super::policy_denied(
            "stratus:node-agent (a node acts for its own host only)",
        )),
        None if ctx.is_admin() || ctx.has_role("service") => Ok(()),
        None => Err(super::policy_denied("stratus:node-agent")),
    }
}

async fn register(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(host): Path<String>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    require_agent(&ctx, &host)?;
    let r: StorageReport = crate::json::decode(&raw)?;
    if host.is_empty() || host.len() > 255 || host.contains('/') {
        return Err(ApiError::bad_request(format!("Invalid host name {host:?}")));
    }
    if !(r.total_capacity_gb.is_finite()
        && r.free_capacity_gb.is_finite()
        && r.max_over_subscription_ratio.is_finite())
    {
        return Err(ApiError::bad_request("Capacities must be finite numbers."));
    }
    let ok_name = |b: &str| {
        b.len() <= 64
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !ok_name(&r.backend_name) {
        return Err(ApiError::bad_request(format!(
            "Invalid backend name {:?}",
            r.backend_name
        )));
    }
    // An older agent says nothing: `file`.
    let backend = Some(r.backend_name.clone()).filter(|b| !b.is_empty() && b != service::BACKEND);
    blocking(move || {
        state.store.write(|tx| {
            let now = now_us();
            match tx.get::<StorageNode>(&host)? {
                // Capacity moves all the time: a record write (a change
                // every follower reads) only when it moved by 1%.
                Some(n)
                    if (n.free_capacity_gb - r.free_capacity_gb).abs()
                        <= n.total_capacity_gb / 100.0
                        && n.total_capacity_gb == r.total_capacity_gb
                        && n.max_over_subscription_ratio == r.max_over_subscription_ratio
                        && n.nbd == r.nbd
                        && n.backend_name == backend => {}
                Some(mut n) => {
                    n.nbd = r.nbd.clone();
                    n.backend_name = backend.clone();
                    n.total_capacity_gb = r.total_capacity_gb;
                    n.free_capacity_gb = r.free_capacity_gb;
                    n.max_over_subscription_ratio = r.max_over_subscription_ratio;
                    n.volume_format = r.volume_format.clone();
                    tx.update(&n)?;
                }
                None => {
                    tx.insert(&StorageNode {
                        id: host.clone(),
                        total_capacity_gb: r.total_capacity_gb,
                        free_capacity_gb: r.free_capacity_gb,
                        max_over_subscription_ratio: r.max_over_subscription_ratio,
                        volume_format: r.volume_format.clone(),
                        disabled: false,
                        disabled_reason: None,
                        created_us: now,
                        nbd: r.nbd.clone(),
                        backend_name: backend.clone(),
                    })?;
                }
            }
            tx.set_liveness(StorageNode::KIND_NAME, &host, now)?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn work(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(host): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<VolumeWorkList>, ApiError> {
    require_agent(&ctx, &host)?;
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let wait = q
        .get("wait")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60);
    let mut rx = state.volumes.subscribe();
    if *rx.borrow() == since && wait > 0 && !state.compute.is_closing() {
        let _ = tokio::time::timeout(Duration::from_secs(wait), async {
            while *rx.borrow_and_update() == since {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    let revision = *rx.borrow();
    blocking(move || {
        let mut work = Vec::new();
        let mut exports = Vec::new();
        for v in state.store.list::<Volume>(&StoreQuery::parent(&host))? {
            if exported(&state, &host, &v)? {
                exports.push(v.id.clone());
            }
            if let Some(task) = v.task {
                work.push(VolumeWork {
                    id: v.id,
                    task,
                    generation: v.generation,
                    size_gb: v.extend_to.unwrap_or(v.size),
                    source: if task == stratus_wire::volume::VolumeTask::Rewrite {
                        v.rewrite_from
                    } else {
                        v.source
                    },
                    volume_id: None,
                    upload: None,
                    nbd: None,
                });
            }
        }
        for s in state.store.list::<Snapshot>(&StoreQuery::parent(&host))? {
            if let Some(task) = s.task {
                work.push(VolumeWork {
                    id: s.id,
                    task,
                    generation: s.generation,
                    size_gb: s.size,
                    source: None,
                    volume_id: Some(s.volume_id),
                    upload: None,
                    nbd: None,
                });
            }
        }
        work.extend(super::backups::work(&state, &host)?);
        work.extend(super::migrate::work(&state, &host)?);
        exports.extend(super::migrate::exports(&state, &host)?);
        exports.sort();
        exports.dedup();
        Ok(axum::Json(VolumeWorkList {
            revision,
            work,
            exports,
        }))
    })
    .await
}

/// Whether volume `v` of storage node `host` is attached to a server on
/// another node (which reaches it over NBD).
fn exported(state: &AppState, host: &str, v: &Volume) -> Result<bool, ApiError> {
    for a in &v.attachments {
        let Some(sid) = a.server_id.as_deref() else {
            continue;
        };
        // Only a server's own attach (its block device mappings name
        // the attachment) is served; an attachments-API record (3.27)
        // is the volume service's side only.
        let server = state.store.get::<crate::compute::model::Server>(sid)?;
        if server
            .filter(|s| s.volumes.iter().any(|sv| sv.holds(&a.id)))
            .and_then(|s| s.host)
            .is_some_and(|h| h != host)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn report(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((host, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    require_agent(&ctx, &host)?;
    let r: VolumeReport = crate::json::decode(&raw)?;
    blocking(move || {
        if super::migrate::owns_task(&state, &id)? {
            super::migrate::report(&state, &host, &id, &r)
        } else if super::backups::owns_task(&state, &id)? {
            super::backups::report(&state, &host, &id, &r)
        } else {
            service::task_done(&state, &host, &id, &r)
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
