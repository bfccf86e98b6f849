//! The admin views of the storage nodes: `os-services` changes (enable,
//! disable, disable with a reason; freeze and thaw refused), `os-hosts`,
//! `scheduler-stats/get_pools` and `/extensions`. A storage node is
//! Cinder's `cinder-volume` service on host `<node>@file` with one pool,
//! `<node>@file#file`; the controller is the `cinder-scheduler`.
//!
//! Microversions: 3.28 `get_pools` filters by `name`, 3.35 by
//! `volume_type`; 3.32 `os-services/get-log` and `set-log`. The
//! `cinder-api`, `cinder-scheduler` and `cinder-backup` services are this
//! `stratus` process, whose log level (`STRATUS_LOG`, fixed at start)
//! `get-log` reports; `set-log` succeeds only when it asks for that level
//! and is otherwise a 501: the level cannot be changed while running.
//! Storage nodes are separate processes whose level is not known here:
//! `get-log` lists none of them and `set-log` for them is a 501.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::model::{Snapshot, StorageNode, Volume};
use super::service::capacities;
use super::{Mv, VCtx, blocking, body, not_found, ts};
use crate::{ApiError, AppState};

type J = Result<axum::Json<Value>, ApiError>;

pub use super::service::{PROTOCOL, VENDOR};

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

/// The level this process logs at, in Python's names (what Cinder
/// answers), as the tracing subscriber set it at start.
fn log_level() -> &'static str {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => "TRACE",
        LevelFilter::DEBUG => "DEBUG",
        LevelFilter::INFO => "INFO",
        LevelFilter::WARN => "WARNING",
        LevelFilter::ERROR => "ERROR",
        _ => "OFF",
    }
}

/// The services a log request names (`binary`: absent, empty or `*` for
/// all).
fn log_binaries(b: &Value) -> Result<Vec<&'static str>, ApiError> {
    const ALL: &[&str] = &[
        "cinder-api",
        "cinder-scheduler",
        "cinder-backup",
        "cinder-volume",
    ];
    match b.get("binary") {
        None | Some(Value::Null) => Ok(ALL.to_vec()),
        Some(Value::String(s)) if s.is_empty() || s == "*" => Ok(ALL.to_vec()),
        Some(Value::String(s)) => ALL
            .iter()
            .find(|x| **x == s.as_str())
            .map(|x| vec![*x])
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input received: {s} is not a valid binary."
                ))
            }),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input received: binary {other} is not a string."
        ))),
    }
}

/// `get-log` (the levels as a body) and `set-log` (`None`: done), see the
/// module's note.
fn log_action(action: &str, b: &Value) -> Result<Option<Value>, ApiError> {
    let binaries = log_binaries(b)?;
    let text = |k: &str| match b.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input received: {k} {other} is not a string."
        ))),
    };
    let (server, prefix) = (text("server")?, text("prefix")?);
    let controller = crate::compute::zones::controller_host();
    let here = server.is_empty() || server == controller;
    // The one logger there is: `stratus`.
    let logger = "stratus";
    let ours: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| *b != "cinder-volume")
        .collect();
    if action == "get-log" {
        let rows: Vec<Value> = if here {
            ours.iter()
                .map(|bin| {
                    let levels = if logger.starts_with(prefix.as_str()) {
                        json!({ logger: log_level() })
                    } else {
                        json!({})
                    };
                    json!({"binary": bin, "host": controller, "levels": levels})
                })
                .collect()
        } else {
            Vec::new()
        };
        return Ok(Some(json!({"log_levels": rows})));
    }
    let level = match b.get("level") {
        Some(Value::String(l)) => l.to_ascii_uppercase(),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input received: level is required (DEBUG, INFO, WARNING or ERROR).",
            ));
        }
    };
    if !["DEBUG", "INFO", "WARNING", "ERROR"].contains(&level.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: {level} is not a valid log level."
        )));
    }
    let not_implemented = |why: String| ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, why);
    if binaries.contains(&"cinder-volume") && (ours.is_empty() || !here) {
        return Err(not_implemented(
            "The log level of a storage node is set where it starts (STRATUS_LOG), not through the API.".into(),
        ));
    }
    if level != log_level() {
        return Err(not_implemented(format!(
            "The log level of stratus ({}) is set at start (STRATUS_LOG) and cannot be changed while it runs.",
            log_level()
        )));
    }
    Ok(None)
}

async fn service_action(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let action = super::param(&p, "action");
    if action == "get-log" || action == "set-log" {
        mv.require(32)?;
        ctx.admin(&format!("volume_extension:services:{action}"))?;
        return Ok(match log_action(&action, &body(&raw)?)? {
            Some(out) => axum::Json(out).into_response(),
            None => axum::http::StatusCode::ACCEPTED.into_response(),
        });
    }
    service_update(state, ctx, action, raw)
        .await
        .map(IntoResponse::into_response)
}

async fn service_update(state: AppState, ctx: VCtx, action: String, raw: Bytes) -> J {
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
                "host_name": c.node.service_host(),
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
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    ctx.admin("scheduler_extension:scheduler_stats:get_pools")?;
    let detail = q
        .get("detail")
        .is_some_and(|d| matches!(d.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    // 3.28: by pool name; 3.35: by volume type (the pools whose
    // capabilities satisfy its extra specs, as the scheduler decides).
    let name = q.get("name").filter(|_| mv.at_least(28)).cloned();
    let vtype = q.get("volume_type").filter(|_| mv.at_least(35)).cloned();
    blocking(move || {
        let (caps, specs) = state.store.write(|tx| {
            let specs = match &vtype {
                None => Default::default(),
                Some(t) => super::types::find(tx, &ctx, t)?.extra_specs,
            };
            Ok::<_, ApiError>((capacities(&state, tx)?, specs))
        })?;
        let caps: Vec<_> = caps
            .into_iter()
            .filter(|c| {
                super::service::satisfies(&super::service::capabilities(c), &specs)
                    && name.as_ref().is_none_or(|n| *n == c.node.pool_name())
            })
            .collect();
        let seen = state.store.liveness(StorageNode::KIND_NAME)?;
        let pools: Vec<Value> = caps
            .into_iter()
            .map(|c| {
                let name = c.node.pool_name();
                if !detail {
                    return json!({"name": name});
                }
                // What the scheduler matches extra specs against.
                let mut caps = super::service::capabilities(&c);
                caps.insert(
                    "timestamp".into(),
                    json!(seen.get(&c.node.id).map(|t| ts(*t))),
                );
                json!({"name": name, "capabilities": caps})
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
        let Some(node) = state.store.get::<StorageNode>(node_of(&host))? else {
            return Err(not_found("Host", &host));
        };
        let prop = |t: &str, title: &str, d: &str| json!({"type": t, "title": title, "description": d});
        Ok(axum::Json(json!({
            "namespace": "OS::Storage::Capabilities::file",
            "vendor_name": VENDOR,
            "volume_backend_name": node.backend(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_read_and_only_set_to_what_they_are() {
        let got = log_action("get-log", &json!({"binary": "cinder-api"}))
            .unwrap()
            .unwrap();
        let rows = got["log_levels"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["levels"]["stratus"], log_level());
        let all = log_action("get-log", &json!({})).unwrap().unwrap();
        assert_eq!(
            all["log_levels"].as_array().unwrap().len(),
            3,
            "the storage nodes are not listed"
        );
        let none = log_action("get-log", &json!({"prefix": "sqlalchemy"}))
            .unwrap()
            .unwrap();
        assert_eq!(none["log_levels"][0]["levels"], json!({}));
        assert!(log_action("get-log", &json!({"binary": "nova-api"})).is_err());
        assert!(log_action("set-log", &json!({"level": "LOUD"})).is_err());
        assert!(log_action("set-log", &json!({})).is_err());
        let other = if log_level() == "ERROR" {
            "DEBUG"
        } else {
            "ERROR"
        };
        let e = log_action("set-log", &json!({"level": other})).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::NOT_IMPLEMENTED);
        let e = log_action(
            "set-log",
            &json!({"level": "INFO", "binary": "cinder-volume"}),
        )
        .unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::NOT_IMPLEMENTED);
    }
}
