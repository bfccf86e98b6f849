//! The admin views of the storage nodes: `os-services` changes (enable,
//! disable, disable with a reason; freeze and thaw refused), `os-hosts`,
//! `scheduler-stats/get_pools` and `/extensions`. A storage node is
//! Cinder's `cinder-volume` service on host `<node>@file` with one pool,
//! `<node>@file#file`; the controller is the `cinder-scheduler`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::model::{Snapshot, StorageNode, Volume};
use super::service::capacities;
use super::{VCtx, blocking, body, not_found, ts};
use crate::{ApiError, AppState};

type J = Result<axum::Json<Value>, ApiError>;

/// The backend (and pool) name of every storage node.
pub const BACKEND: &str = "file";
/// The vendor and protocol the backend reports.
pub const VENDOR: &str = "Stratus";
pub const PROTOCOL: &str = "file";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-services/{action}", put(service_action))
        .route("/os-hosts", get(hosts))
        .route("/os-hosts/{host}", get(host))
        .route("/scheduler-stats/get_pools", get(pools))
        .route("/extensions", get(extensions))
        .route("/capabilities/{host}", get(capabilities))
}

/// The storage node a Cinder host names: `node`, `node@file` or
/// `node@file#file`.
fn node_of(host: &str) -> &str {
    host.split(['@', '#']).next().unwrap_or(host)
}

/// Whether service host `have` answers a `host=` filter `want` (the whole
/// name, or the part before `@`, as Tempest's lookups expect).
pub fn host_matches(have: &str, want: &str) -> bool {
    let want = want.split('#').next().unwrap_or(want);
    have == want || node_of(have) == want
}

type P = Path<HashMap<String, String>>;

async fn service_action(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let action = super::param(&p, "action");
    ctx.admin("volume_extension:services:update")?;
    let b = body(&raw)?;
    let text = move |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    let host = text("host").unwrap_or_default();
    blocking(move || {
        let node = state.store.get::<StorageNode>(node_of(&host))?;
        match action.as_str() {
            "freeze" | "thaw" => {
                // Replication failover needs a replicating backend.
                return Err(ApiError::bad_request(match node {
                    None => format!("Invalid host: {host} is not a volume service host."),
                    Some(_) => format!(
                        "Host {host} cannot be {}: the file backend does not replicate.",
                        if action == "freeze" { "frozen" } else { "thawed" }
                    ),
                }));
            }
            "enable" | "disable" | "disable-log-reason" => {}
            _ => return Err(not_found("Service action", &action)),
        }
        let binary = text("binary").or(text("service")).unwrap_or_default();
        let reason = match action.as_str() {
            "disable-log-reason" => match text("disabled_reason") {
                Some(r) if !r.trim().is_empty() && r.len() <= 255 => Some(r),
                _ => {
                    return Err(ApiError::bad_request(
                        "Invalid input received: disabled_reason must be a string of 1 to 255 characters.",
                    ));
                }
            },
            _ => None,
        };
        if binary != "cinder-volume" || host.is_empty() || node.is_none() {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("Service {binary} on host {host} could not be found."),
            ));
        }
        let disabled = action != "enable";
        let n = state.store.write(|tx| {
            let mut n = tx.fetch::<StorageNode>(node_of(&host))?;
            n.disabled = disabled;
            n.disabled_reason = reason.clone();
            tx.update(&n)?;
            Ok::<_, ApiError>(n)
        })?;
        let mut out = json!({
            "disabled": n.disabled,
            "status": if n.disabled { "disabled" } else { "enabled" },
            "host": host,
            "service": binary,
            "binary": binary,
        });
        if action != "disable" {
            out["disabled_reason"] = json!(n.disabled_reason);
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn hosts(State(state): State<AppState>, ctx: VCtx) -> J {
    ctx.admin("volume_extension:hosts")?;
    blocking(move || {
        let caps = state.store.write(|tx| capacities(&state, tx))?;
        let seen = state.store.liveness(StorageNode::KIND_NAME)?;
        let mut out = vec![json!({
            "host_name": crate::compute::zones::controller_host(),
            "service": "cinder-scheduler",
            "zone": crate::compute::zones::DEFAULT_ZONE,
            "service-status": "available",
            "service-state": "enabled",
            "last-update": ts(crate::timeutil::now_us()),
        })];
        for c in caps {
            out.push(json!({
                "host_name": format!("{}@{BACKEND}", c.node.id),
                "service": "cinder-volume",
                "zone": c.zone,
                "service-status": if c.up { "available" } else { "unavailable" },
                "service-state": if c.node.disabled { "disabled" } else { "enabled" },
                "last-update": seen.get(&c.node.id).map(|t| ts(*t)),
            }));
        }
        Ok(axum::Json(json!({"hosts": out})))
    })
    .await
}

/// What a storage node holds: the total, then per project (Cinder's
/// `os-hosts/{host}`).
async fn host(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    let host = super::param(&p, "host");
    ctx.admin("volume_extension:hosts")?;
    blocking(move || {
        let id = node_of(&host).to_string();
        if state.store.get::<StorageNode>(&id)?.is_none() {
            return Err(not_found("Host", &host));
        }
        let vols = state.store.list::<Volume>(&StoreQuery::parent(&id))?;
        let snaps = state.store.list::<Snapshot>(&StoreQuery::parent(&id))?;
        // project -> (volumes, GiB, snapshots, GiB)
        let mut per: HashMap<String, (u64, u64, u64, u64)> = HashMap::new();
        for v in &vols {
            let e = per.entry(v.project_id.clone()).or_default();
            e.0 += 1;
            e.1 += v.size;
        }
        for s in &snaps {
            let e = per.entry(s.project_id.clone()).or_default();
            e.2 += 1;
            e.3 += s.size;
        }
        let row = |project: &str, t: (u64, u64, u64, u64)| {
            json!({"resource": {
                "host": host, "project": project,
                "volume_count": t.0.to_string(), "total_volume_gb": t.1.to_string(),
                "snapshot_count": t.2.to_string(), "total_snapshot_gb": t.3.to_string(),
            }})
        };
        let total = per.values().fold((0, 0, 0, 0), |a, b| {
            (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
        });
        let mut projects: Vec<_> = per.into_iter().collect();
        projects.sort();
        let mut out = vec![row("(total)", total)];
        out.extend(projects.into_iter().map(|(p, t)| row(&p, t)));
        Ok(axum::Json(json!({"host": out})))
    })
    .await
}

async fn pools(
    State(state): State<AppState>,
    ctx: VCtx,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    ctx.admin("scheduler_extension:scheduler_stats:get_pools")?;
    let detail = q
        .get("detail")
        .is_some_and(|d| matches!(d.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    blocking(move || {
        let caps = state.store.write(|tx| capacities(&state, tx))?;
        let seen = state.store.liveness(StorageNode::KIND_NAME)?;
        let pools: Vec<Value> = caps
            .into_iter()
            .map(|c| {
                let name = format!("{}@{BACKEND}#{BACKEND}", c.node.id);
                if !detail {
                    return json!({"name": name});
                }
                json!({"name": name, "capabilities": {
                    "volume_backend_name": BACKEND,
                    "vendor_name": VENDOR,
                    "driver_version": env!("CARGO_PKG_VERSION"),
                    "storage_protocol": PROTOCOL,
                    "total_capacity_gb": c.node.total_capacity_gb,
                    "free_capacity_gb": c.node.free_capacity_gb,
                    "provisioned_capacity_gb": c.provisioned_gb,
                    "max_over_subscription_ratio": c.node.max_over_subscription_ratio.to_string(),
                    "thin_provisioning_support": true,
                    "thick_provisioning_support": false,
                    "reserved_percentage": 0,
                    "QoS_support": false,
                    "multiattach": true,
                    "timestamp": seen.get(&c.node.id).map(|t| ts(*t)),
                }})
            })
            .collect();
        Ok(axum::Json(json!({"pools": pools})))
    })
    .await
}

async fn extensions(_ctx: VCtx) -> J {
    let ext = |alias: &str, name: &str, description: &str| {
        json!({
            "alias": alias, "name": name, "description": description,
            "links": [], "updated": "2023-08-31T00:00:00+00:00",
        })
    };
    Ok(axum::Json(json!({"extensions": [
        ext("os-availability-zone", "AvailabilityZones", "Describe Availability Zones."),
        ext("os-extended-snapshot-attributes", "ExtendedSnapshotAttributes", "Extended SnapshotAttributes support."),
        ext("os-hosts", "Hosts", "Admin-only host administration."),
        ext("os-quota-sets", "Quotas", "Quota management support."),
        ext("os-services", "Services", "Services support."),
        ext("os-vol-host-attr", "VolumeHostAttribute", "Expose host as an attribute of a volume."),
        ext("os-vol-image-meta", "VolumeImageMetadata", "Show image metadata associated with the volume."),
        ext("os-vol-tenant-attr", "VolumeTenantAttribute", "Expose the internal project_id as an attribute of a volume."),
        ext("os-volume-actions", "VolumeActions", "Enable volume actions."),
        ext("os-volume-type-access", "VolumeTypeAccess", "Volume type access support."),
        ext("scheduler-stats", "Scheduler_stats", "Scheduler stats support."),
    ]})))
}

/// What a backend offers (`/capabilities/{host}`).
async fn capabilities(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin("volume_extension:capabilities")?;
    let host = super::param(&p, "host");
    blocking(move || {
        if state.store.get::<StorageNode>(node_of(&host))?.is_none() {
            return Err(not_found("Host", &host));
        }
        let prop = |t: &str, title: &str, d: &str| json!({"type": t, "title": title, "description": d});
        Ok(axum::Json(json!({
            "namespace": "OS::Storage::Capabilities::file",
            "vendor_name": VENDOR,
            "volume_backend_name": BACKEND,
            "pool_name": null,
            "driver_version": env!("CARGO_PKG_VERSION"),
            "storage_protocol": PROTOCOL,
            "display_name": null,
            "description": null,
            "visibility": null,
            "replication_targets": [],
            "properties": {
                "thin_provisioning": prop("boolean", "Thin Provisioning", "Volumes are qcow2 files that grow as they are written."),
                "compression": prop("boolean", "Compression", "Not offered."),
                "qos": prop("boolean", "QoS", "Not offered."),
                "replication": prop("boolean", "Replication", "Not offered."),
            },
        })))
    })
    .await
}
