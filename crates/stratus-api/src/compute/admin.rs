//! Operator APIs that read what the store already holds: `os-hosts` (up to
//! 2.42), `os-simple-tenant-usage`, `os-instance_usage_audit_log`,
//! `os-server-external-events`, and the `extensions` list.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use stratus_store::Query as StoreQuery;

use super::model::{Aggregate, ComputeNode, Migration, Server};
use super::zones::{controller_host, zone_of};
use super::{Mv, body, policy_denied};
use crate::identity::policy::Ctx;
use crate::timeutil::{iso_naive, now_us, parse_iso};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-hosts", get(hosts))
        .route("/os-hosts/{host}", get(host_show).put(host_update))
        .route("/os-hosts/{host}/{action}", get(host_power))
        .route("/os-simple-tenant-usage", get(usage_list))
        .route("/os-simple-tenant-usage/{tenant}", get(usage_show))
        .route("/os-instance_usage_audit_log", get(audit_log))
        .route(
            "/os-instance_usage_audit_log/{before}",
            get(audit_log_before),
        )
        .route("/os-server-external-events", post(external_events))
        .route("/os-migrations", get(migrations))
        .route("/servers/{id}/migrations", get(server_migrations))
        .route(
            "/servers/{id}/migrations/{mid}",
            get(server_migration).delete(abort_migration),
        )
        .route(
            "/servers/{id}/migrations/{mid}/action",
            post(migration_action),
        )
        .route("/extensions", get(extensions))
        .route("/extensions/{alias}", get(extension))
}

fn require_admin(ctx: &Ctx, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(policy_denied(rule))
    }
}

fn host_not_found(host: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Compute host {host} could not be found."),
    )
}

// ---- os-hosts ---------------------------------------------------------------

/// `os-hosts` left the API at 2.43.
fn hosts_available(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(43) {
        Err(super::no_such_resource())
    } else {
        Ok(())
    }
}

async fn hosts(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    hosts_available(mv)?;
    require_admin(&ctx, "os_compute_api:os-hosts:list")?;
    let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    let mut out: Vec<Value> = state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .iter()
        .map(|n| json!({"host_name": n.id, "service": "compute", "zone": zone_of(&aggs, &n.id)}))
        .collect();
    let controller = controller_host();
    for service in ["scheduler", "conductor"] {
        out.push(json!({"host_name": controller, "service": service, "zone": "internal"}));
    }
    // A blank zone lists every host, as in Nova.
    if let Some(zone) = q.get("zone").filter(|z| !z.is_empty()) {
        out.retain(|h| h["zone"] == json!(zone));
    }
    Ok(axum::Json(json!({ "hosts": out })))
}

fn node(state: &AppState, host: &str) -> Result<ComputeNode, ApiError> {
    state
        .store
        .get::<ComputeNode>(host)?
        .ok_or_else(|| host_not_found(host))
}

/// The host's capacity, what its servers use, and the use per project.
async fn host_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(host): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    hosts_available(mv)?;
    require_admin(&ctx, "os_compute_api:os-hosts:show")?;
    let n = node(&state, &host)?;
    let resource = |project: &str, cpu: u64, mem: u64, disk: u64| json!({"resource": {"host": host, "project": project, "cpu": cpu, "memory_mb": mem, "disk_gb": disk}});
    let mut per_project: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for s in state.store.list::<Server>(&StoreQuery::parent(&host))? {
        let e = per_project.entry(s.project_id.clone()).or_default();
        e.0 += u64::from(s.flavor.vcpus);
        e.1 += s.flavor.ram;
        e.2 += s.flavor.disk + s.flavor.ephemeral;
    }
    let used = per_project
        .values()
        .fold((0, 0, 0), |a, u| (a.0 + u.0, a.1 + u.1, a.2 + u.2));
    let mut out = vec![
        resource("(total)", u64::from(n.vcpus), n.memory_mb, n.disk_gb),
        resource("(used_now)", used.0, used.1, used.2),
        resource("(used_max)", used.0, used.1, used.2),
    ];
    for (p, u) in &per_project {
        out.push(resource(p, u.0, u.1, u.2));
    }
    Ok(axum::Json(json!({ "host": out })))
}

/// `PUT /os-hosts/{host}`: `status` enables or disables the compute
/// service; maintenance mode is a hypervisor feature Stratus's drivers do
/// not have (Nova's libvirt driver answers the same 501).
async fn host_update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(host): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    hosts_available(mv)?;
    require_admin(&ctx, "os_compute_api:os-hosts:update")?;
    let b = body(&raw)?;
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::bad_request("The request body must be an object"))?;
    let pick = |key: &str| -> Result<Option<bool>, ApiError> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("enable") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("disable") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {key}. Value: {v}. It is not one of ['enable', 'disable']"
            ))),
        }
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["status", "maintenance_mode"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute host. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let (status, maintenance) = (pick("status")?, pick("maintenance_mode")?);
    if status.is_none() && maintenance.is_none() {
        return Err(ApiError::bad_request(
            "'status' or 'maintenance_mode' needed for host update",
        ));
    }
    node(&state, &host)?;
    if maintenance.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "Virt driver does not implement host maintenance mode.",
        ));
    }
    let enable = status.expect("checked above");
    state.store.write(|tx| {
        let mut n = tx
            .get::<ComputeNode>(&host)?
            .ok_or_else(|| host_not_found(&host))?;
        n.disabled = !enable;
        if enable {
            n.disabled_reason = None;
        }
        n.updated_us = now_us();
        tx.update(&n)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(axum::Json(json!({
        "host": host,
        "status": if enable { "enabled" } else { "disabled" },
    })))
}

/// Power actions on a whole host are not something a driver here can do:
/// 501 as Nova's libvirt driver, after the same 403 and 404 checks.
async fn host_power(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((host, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    hosts_available(mv)?;
    if !["startup", "shutdown", "reboot"].contains(&action.as_str()) {
        return Err(super::no_such_resource());
    }
    require_admin(&ctx, &format!("os_compute_api:os-hosts:{action}"))?;
    node(&state, &host)?;
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("Virt driver does not implement host {action}."),
    ))
}

// ---- os-simple-tenant-usage -----------------------------------------------------

/// Nova's accepted time formats: ISO 8601 with or without fraction, or
/// with a space instead of the `T`.
fn usage_time(q: &HashMap<String, String>, key: &str, default: i64) -> Result<i64, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(t) => parse_iso(&t.replace(' ', "T")).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for query parameters {key}. Invalid time format: {t}"
            ))
        }),
    }
}

fn period(q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let now = now_us();
    let end = usage_time(q, "end", now)?;
    let start = usage_time(q, "start", end - 24 * 3600 * 1_000_000)?;
    if start > end {
        return Err(ApiError::bad_request(
            "Invalid start time. The start time cannot occur after the end time.",
        ));
    }
    Ok((start, end))
}

/// One tenant's usage in [start, end]: hours each server existed in the
/// window, times its flavor. Deleted servers are no longer in the store
/// and so are not counted.
fn tenant_usage(servers: &[Server], tenant: &str, start: i64, end: i64, detailed: bool) -> Value {
    let now = now_us();
    let mut totals = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut rows = Vec::new();
    for s in servers.iter().filter(|s| s.project_id == tenant) {
        let from = s.launched_us.unwrap_or(s.created_us);
        let (a, b) = (from.max(start), end.min(now));
        let hours = if b > a {
            (b - a) as f64 / 3_600_000_000.0
        } else {
            0.0
        };
        let (vcpus, mem, disk) = (
            f64::from(s.flavor.vcpus),
            s.flavor.ram as f64,
            (s.flavor.disk + s.flavor.ephemeral) as f64,
        );
        totals.0 += hours;
        totals.1 += hours * vcpus;
        totals.2 += hours * mem;
        totals.3 += hours * disk;
        if detailed {
            rows.push(json!({
                "instance_id": s.id,
                "name": s.name,
                "hours": hours,
                "memory_mb": s.flavor.ram,
                "local_gb": s.flavor.disk + s.flavor.ephemeral,
                "vcpus": s.flavor.vcpus,
                "tenant_id": s.project_id,
                "flavor": s.flavor.name,
                "started_at": iso_naive(from),
                "ended_at": null,
                "state": s.vm_state,
                "uptime": (now - from).max(0) / 1_000_000,
            }));
        }
    }
    let mut v = json!({
        "tenant_id": tenant,
        "total_hours": totals.0,
        "total_vcpus_usage": totals.1,
        "total_memory_mb_usage": totals.2,
        "total_local_gb_usage": totals.3,
        "start": iso_naive(start),
        "stop": iso_naive(end),
    });
    if detailed {
        v["server_usages"] = json!(rows);
    }
    v
}

fn in_window(s: &Server, start: i64, end: i64) -> bool {
    s.launched_us.unwrap_or(s.created_us) <= end && start <= now_us()
}

/// The servers of the window, one page of them: Nova pages usage by
/// instance (`limit`, `marker` from 2.40; before that it silently stops at
/// the 1,000 of `max_limit`).
fn usage_page(
    mut servers: Vec<Server>,
    q: &HashMap<String, String>,
    mv: Mv,
    start: i64,
    end: i64,
) -> Result<(Vec<Server>, Option<usize>), ApiError> {
    servers.retain(|s| in_window(s, start, end));
    servers.sort_by(|a, b| a.created_us.cmp(&b.created_us).then(a.id.cmp(&b.id)));
    let (limit, marker) = if mv.at_least(40) {
        super::paging(q)?
    } else {
        (None, None)
    };
    let limit = limit.or(Some(1000));
    let page = super::page(servers, limit, marker.as_deref(), |s| &s.id)?;
    Ok((page, limit))
}

fn usage_links(
    state: &AppState,
    path: &str,
    q: &HashMap<String, String>,
    mv: Mv,
    limit: Option<usize>,
    page: &[Server],
) -> Option<Value> {
    if !mv.at_least(40) {
        return None;
    }
    super::next_link(
        state,
        path,
        q,
        limit,
        page.last().map(|s| s.id.as_str()),
        page.len(),
    )
}

async fn usage_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:os-simple-tenant-usage:list")?;
    let (start, end) = period(&q)?;
    let detailed = q
        .get("detailed")
        .is_some_and(|d| super::parse_bool(&json!(d)).unwrap_or(false));
    let all = state.store.list::<Server>(&StoreQuery::all())?;
    let (servers, limit) = usage_page(all, &q, mv, start, end)?;
    let mut tenants: Vec<&str> = servers.iter().map(|s| s.project_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let usages: Vec<Value> = tenants
        .iter()
        .map(|t| tenant_usage(&servers, t, start, end, detailed))
        .collect();
    let mut out = json!({ "tenant_usages": usages });
    if let Some(l) = usage_links(&state, "os-simple-tenant-usage", &q, mv, limit, &servers) {
        out["tenant_usages_links"] = l;
    }
    Ok(axum::Json(out))
}

async fn usage_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    if !(ctx.is_admin() || ctx.project_id() == Some(tenant.as_str())) {
        return Err(policy_denied("os_compute_api:os-simple-tenant-usage:show"));
    }
    let (start, end) = period(&q)?;
    let owned = state.store.list::<Server>(&StoreQuery::owner(&tenant))?;
    let (servers, limit) = usage_page(owned, &q, mv, start, end)?;
    if servers.is_empty() {
        return Ok(axum::Json(json!({ "tenant_usage": {} })));
    }
    let mut out = json!({ "tenant_usage": tenant_usage(&servers, &tenant, start, end, true) });
    let path = format!("os-simple-tenant-usage/{tenant}");
    if let Some(l) = usage_links(&state, &path, &q, mv, limit, &servers) {
        out["tenant_usage_links"] = l;
    }
    Ok(axum::Json(out))
}

// ---- os-instance_usage_audit_log ------------------------------------------------

/// Stratus runs no periodic usage-audit task, so every host reports as not
/// run for the period: the truthful answer in Nova's shape.
fn audit_report(state: &AppState, before: i64) -> Result<Value, ApiError> {
    let hosts: Vec<String> = state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .into_iter()
        .map(|n| n.id)
        .collect();
    // The last whole month before `before`, as Nova's audit period.
    let day = 86_400 * 1_000_000i64;
    let ending = before - before.rem_euclid(day);
    let beginning = ending - 30 * day;
    Ok(json!({
        "hosts_not_run": hosts,
        "log": {},
        "num_hosts": hosts.len(),
        "num_hosts_done": 0,
        "num_hosts_not_run": hosts.len(),
        "num_hosts_running": 0,
        "overall_status": format!("0 of {} hosts done. 0 errors.", hosts.len()),
        "period_beginning": iso_naive(beginning).replace('T', " "),
        "period_ending": iso_naive(ending).replace('T', " "),
        "total_errors": 0,
        "total_instances": 0,
    }))
}

async fn audit_log(State(state): State<AppState>, ctx: Ctx) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:os-instance-usage-audit-log:list")?;
    Ok(axum::Json(
        json!({"instance_usage_audit_logs": audit_report(&state, now_us())?}),
    ))
}

async fn audit_log_before(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(before): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:os-instance-usage-audit-log:show")?;
    let t = parse_iso(&before.replace(' ', "T"))
        .ok_or_else(|| ApiError::bad_request(format!("Invalid timestamp for date {before}")))?;
    Ok(axum::Json(
        json!({"instance_usage_audit_log": audit_report(&state, t)?}),
    ))
}

// ---- os-server-external-events --------------------------------------------------

const EVENT_NAMES: &[&str] = &[
    "network-changed",
    "network-vif-plugged",
    "network-vif-unplugged",
    "network-vif-deleted",
    "volume-extended",
    "power-update",
    "accelerator-request-bound",
    "volume-reimaged",
];

/// Events other services send about servers. Stratus has no network or
/// volume service yet that needs to act on them, so they are accepted and
/// acknowledged per server, as Nova does.
async fn external_events(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    raw: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&ctx, "os_compute_api:os-server-external-events:create")?;
    let b = body(&raw)?;
    let events = b
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute events. 'events' must be a non-empty list",
            )
        })?;
    let mut out = Vec::new();
    let mut found = 0;
    for e in events {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        let server = e.get("server_uuid").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute server_uuid. 'server_uuid' is a required property",
            )
        })?;
        // `volume-extended` exists from 2.51, `power-update` from 2.76,
        // the last two above what is served, the rest from 2.1.
        let known = EVENT_NAMES.contains(&name)
            && (name != "volume-extended" || mv.at_least(51))
            && (name != "power-update" || mv.at_least(76))
            && (name != "accelerator-request-bound" || mv.at_least(82))
            && name != "volume-reimaged";
        if !known {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute name. Value: {name}. It is not one of {EVENT_NAMES:?}"
            )));
        }
        // An accelerator request names itself in the tag.
        if name == "accelerator-request-bound"
            && e.get("tag")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute tag. An accelerator-request-bound event needs the request's uuid as its tag",
            ));
        }
        // A power update (sent for bare metal in Nova) must say which.
        if name == "power-update"
            && !matches!(
                e.get("tag").and_then(Value::as_str),
                Some("POWER_ON" | "POWER_OFF")
            )
        {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute tag. Value: {}. A power-update event needs tag POWER_ON or POWER_OFF",
                e.get("tag").unwrap_or(&Value::Null)
            )));
        }
        let status = e
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("completed");
        if !["failed", "completed", "in-progress"].contains(&status) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute status. Value: {status}."
            )));
        }
        let mut r = e.clone();
        r["status"] = json!(status);
        match state.store.get::<Server>(server)? {
            Some(s) if s.host.is_some() => {
                found += 1;
                r["code"] = json!(200);
            }
            Some(_) => {
                r["code"] = json!(422);
                r["status"] = json!("failed");
            }
            None => {
                r["code"] = json!(404);
                r["status"] = json!("failed");
            }
        }
        out.push(r);
    }
    if found == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "No instances found for any event",
        ));
    }
    let code = if found == out.len() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((code, axum::Json(json!({ "events": out }))).into_response())
}

// ---- migrations -------------------------------------------------------------

/// `os-migrations`: the resize records (see `resize.rs`). Servers never
/// live-migrate, so the per-server lists of in-progress live migrations
/// are truthfully empty.
async fn migrations(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:os-migrations:index")?;
    // 2.59: paging and changes-since, and no other parameters.
    if mv.at_least(59) {
        const KNOWN: &[&str] = &[
            "hidden",
            "host",
            "instance_uuid",
            "source_compute",
            "status",
            "migration_type",
            "limit",
            "marker",
            "changes-since",
            "changes-before",
            "user_id",
            "project_id",
        ];
        if let Some(k) = q.keys().find(|k| {
            !KNOWN.contains(&k.as_str())
                || (k.as_str() == "changes-before" && !mv.at_least(66))
                || (matches!(k.as_str(), "user_id" | "project_id") && !mv.at_least(80))
        }) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for query parameters {k}. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
        super::paging(&q)?;
        super::time_window(&q, mv)?;
    }
    let out = migration_list(&state, &q, mv)?;
    Ok(axum::Json(json!({ "migrations": out })))
}

/// A live migration in progress as `server-migrations` shows it (2.23),
/// with the bytes its source last reported.
fn server_migration_view(m: &Migration, mv: Mv) -> Value {
    let p = m.progress.unwrap_or_default();
    let mut v = json!({
        "id": m.seq,
        "server_uuid": m.server_id,
        "status": m.status,
        "source_compute": m.source_compute,
        "source_node": m.source_compute,
        "dest_compute": m.dest_compute,
        "dest_node": m.dest_compute,
        "dest_host": "127.0.0.1",
        "memory_total_bytes": p.memory_total_bytes,
        "memory_processed_bytes": p.memory_processed_bytes,
        "memory_remaining_bytes": p.memory_remaining_bytes,
        "disk_total_bytes": p.disk_total_bytes,
        "disk_processed_bytes": p.disk_processed_bytes,
        "disk_remaining_bytes": p.disk_remaining_bytes,
        "created_at": iso_naive(m.created_us),
        "updated_at": iso_naive(m.updated_us),
    });
    if mv.at_least(59) {
        v["uuid"] = json!(m.id);
    }
    if mv.at_least(80) {
        v["user_id"] = json!(m.user_id);
        v["project_id"] = json!(m.project_id);
    }
    v
}

/// The server's live migrations in progress.
fn live_migrations(state: &AppState, id: &str) -> Result<Vec<Migration>, ApiError> {
    Ok(state
        .store
        .list::<Migration>(&StoreQuery::parent(id))?
        .into_iter()
        .filter(super::live::in_progress)
        .collect())
}

async fn server_migrations(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:servers:migrations:index")?;
    super::common::fetch(&state, &ctx, &id)?;
    let list: Vec<Value> = live_migrations(&state, &id)?
        .iter()
        .map(|m| server_migration_view(m, mv))
        .collect();
    Ok(axum::Json(json!({ "migrations": list })))
}

async fn server_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, mid)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&ctx, "os_compute_api:servers:migrations:show")?;
    super::common::fetch(&state, &ctx, &id)?;
    live_migrations(&state, &id)?
        .iter()
        .find(|m| m.seq.to_string() == mid)
        .map(|m| axum::Json(json!({ "migration": server_migration_view(m, mv) })))
        .ok_or_else(|| super::live::not_in_progress(&id, &mid))
}

/// Aborting a live migration (2.24; queued and preparing ones from 2.65).
async fn abort_migration(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, mid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !mv.at_least(24) {
        return Err(super::no_such_resource());
    }
    require_admin(&ctx, "os_compute_api:servers:migrations:delete")?;
    super::common::fetch(&state, &ctx, &id)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        super::live::control(&st, &ctx, &id, &mid, true, mv.at_least(65))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /servers/{id}/migrations/{mid}/action` with `force_complete`
/// (2.22+): the live migration completes now.
async fn migration_action(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, mid)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    if !mv.at_least(22) {
        return Err(super::no_such_resource());
    }
    require_admin(&ctx, "os_compute_api:servers:migrations:force_complete")?;
    let b = super::body(&raw)?;
    if b.as_object()
        .is_none_or(|o| o.len() != 1 || !o.contains_key("force_complete"))
    {
        return Err(ApiError::bad_request(
            "Malformed request body: the only action is force_complete",
        ));
    }
    super::common::fetch(&state, &ctx, &id)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || super::live::control(&st, &ctx, &id, &mid, false, false))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::ACCEPTED)
}

// ---- extensions -------------------------------------------------------------------

/// The v2.1 extensions whose APIs Stratus serves.
const EXTENSIONS: &[(&str, &str)] = &[
    ("os-admin-actions", "AdminActions"),
    ("os-aggregates", "Aggregates"),
    ("os-availability-zone", "AvailabilityZone"),
    ("os-console-output", "ConsoleOutput"),
    ("os-create-backup", "CreateBackup"),
    ("os-extended-availability-zone", "ExtendedAvailabilityZone"),
    ("OS-EXT-IMG-SIZE", "ImageSize"),
    ("OS-EXT-SRV-ATTR", "ExtendedServerAttributes"),
    ("OS-EXT-STS", "ExtendedStatus"),
    ("os-flavor-access", "FlavorAccess"),
    ("OS-FLV-EXT-DATA", "FlavorExtraData"),
    ("os-flavor-extra-specs", "FlavorExtraSpecs"),
    ("flavors", "Flavors"),
    ("os-flavor-manage", "FlavorManage"),
    ("os-hosts", "Hosts"),
    ("os-hypervisors", "Hypervisors"),
    ("images", "Images"),
    ("image-metadata", "ImageMetadata"),
    ("os-instance-actions", "InstanceActions"),
    ("os-instance_usage_audit_log", "OSInstanceUsageAuditLog"),
    ("os-keypairs", "Keypairs"),
    ("limits", "Limits"),
    ("os-lock-server", "LockServer"),
    ("os-migrate-server", "MigrateServer"),
    ("os-migrations", "Migrations"),
    ("os-pause-server", "PauseServer"),
    ("os-quota-class-sets", "QuotaClasses"),
    ("os-quota-sets", "Quotas"),
    ("os-rescue", "Rescue"),
    ("servers", "Servers"),
    ("os-server-external-events", "ServerExternalEvents"),
    ("os-server-diagnostics", "ServerDiagnostics"),
    ("os-server-groups", "ServerGroups"),
    ("server-metadata", "ServerMetadata"),
    ("os-server-tags", "ServerTags"),
    ("os-services", "Services"),
    ("os-shelve", "Shelve"),
    ("os-simple-tenant-usage", "SimpleTenantUsage"),
    ("os-suspend-server", "SuspendServer"),
    ("versions", "Versions"),
];

fn extension_json(alias: &str, name: &str) -> Value {
    json!({
        "alias": alias,
        "name": name,
        "description": name,
        "namespace": "http://docs.openstack.org/compute/ext/fake_xml",
        "updated": "2014-12-03T00:00:00Z",
        "links": [],
    })
}

async fn extensions(_ctx: Ctx) -> axum::Json<Value> {
    let list: Vec<Value> = EXTENSIONS
        .iter()
        .map(|(a, n)| extension_json(a, n))
        .collect();
    axum::Json(json!({ "extensions": list }))
}

async fn extension(_ctx: Ctx, Path(alias): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let (a, n) = EXTENSIONS
        .iter()
        .find(|(a, _)| *a == alias)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Extension {alias} could not be found."),
            )
        })?;
    Ok(axum::Json(json!({ "extension": extension_json(a, n) })))
}

fn flavor_int(id: &str) -> Value {
    id.parse::<i64>().map(|n| json!(n)).unwrap_or(Value::Null)
}

/// One migration as `os-migrations` shows it at `mv`.
fn migration_view(m: &Migration, mv: Mv) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(m.seq));
    v.insert("status".into(), json!(m.status));
    v.insert("instance_uuid".into(), json!(m.server_id));
    v.insert("source_node".into(), json!(m.source_compute));
    v.insert("source_compute".into(), json!(m.source_compute));
    v.insert("dest_node".into(), json!(m.dest_compute));
    v.insert("dest_compute".into(), json!(m.dest_compute));
    v.insert("dest_host".into(), json!("127.0.0.1"));
    v.insert("old_instance_type_id".into(), flavor_int(&m.old_flavor_id));
    v.insert("new_instance_type_id".into(), flavor_int(&m.new_flavor_id));
    v.insert("created_at".into(), json!(iso_naive(m.created_us)));
    v.insert("updated_at".into(), json!(iso_naive(m.updated_us)));
    if mv.at_least(23) {
        v.insert("migration_type".into(), json!(m.migration_type));
    }
    if mv.at_least(59) {
        v.insert("uuid".into(), json!(m.id));
    }
    if mv.at_least(80) {
        v.insert("user_id".into(), json!(m.user_id));
        v.insert("project_id".into(), json!(m.project_id));
    }
    Value::Object(v)
}

/// Every migration matching `os-migrations`' filters, newest first.
fn migration_list(
    state: &AppState,
    q: &HashMap<String, String>,
    mv: Mv,
) -> Result<Vec<Value>, ApiError> {
    let mut all = state.store.list::<Migration>(&StoreQuery::all())?;
    all.sort_by(|a, b| b.created_us.cmp(&a.created_us).then(b.seq.cmp(&a.seq)));
    let window = super::time_window(q, mv)?;
    all.retain(|m| {
        q.get("instance_uuid").is_none_or(|u| &m.server_id == u)
            && q.get("status")
                .is_none_or(|st| m.status.eq_ignore_ascii_case(st))
            && q.get("source_compute")
                .is_none_or(|h| &m.source_compute == h)
            && q.get("host")
                .is_none_or(|h| &m.source_compute == h || &m.dest_compute == h)
            && q.get("migration_type")
                .is_none_or(|t| &m.migration_type == t)
            && super::in_window(window, m.updated_us)
            && (!mv.at_least(80)
                || q.get("user_id").is_none_or(|u| &m.user_id == u)
                    && q.get("project_id").is_none_or(|p| &m.project_id == p))
    });
    if mv.at_least(59) {
        let (limit, marker) = super::paging(q)?;
        if let Some(mk) = marker {
            let pos = all
                .iter()
                .position(|m| m.id == mk)
                .ok_or_else(|| ApiError::bad_request(format!("Marker {mk} could not be found.")))?;
            all.drain(..=pos);
        }
        if let Some(l) = limit {
            all.truncate(l);
        }
    }
    Ok(all.iter().map(|m| migration_view(m, mv)).collect())
}
