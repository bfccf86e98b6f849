//! Server actions (`POST /servers/{id}/action`) and `os-instance-actions`.
//!
//! An action checks the server's state as Nova does (409 otherwise), sets
//! the task and bumps the server's generation; the node agent sees the
//! change, acts, and reports (`service::task_done`).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::commands::{Outcome, ServerAction};
use super::common::{fetch, instance_not_found, require_member, visible};
use super::model::{ComputeNode, InstanceAction, Server};
use super::params::admin_pass;
use super::servers::render;
use super::states::{vm, wrong_state};
use super::{Mv, body, policy_denied};
use crate::identity::policy::Ctx;
use crate::middleware::RequestId;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers/{id}/action", post(action))
        .route("/servers/{id}/os-instance-actions", get(actions_list))
        .route("/servers/{id}/os-instance-actions/{req}", get(action_show))
        .route("/servers/{id}/diagnostics", get(diagnostics))
        .route("/servers/{id}/topology", get(topology))
}

async fn action(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    axum::Extension(req_id): axum::Extension<RequestId>,
    headers: axum::http::HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let b = body(&raw)?;
    let token = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    run(&state, &ctx, &token, mv, &id, &req_id.0, &b).await
}

/// Actions that need the nodes a server runs on (claims, a destination,
/// its disk): for a server at an edge site the site carries them out, as
/// asked through its own link.
fn site_carries_out(a: &ServerAction) -> bool {
    matches!(
        a,
        ServerAction::Resize { .. }
            | ServerAction::ConfirmResize
            | ServerAction::RevertResize
            | ServerAction::Migrate { .. }
            | ServerAction::LiveMigrate { .. }
            | ServerAction::Evacuate { .. }
            | ServerAction::Shelve
            | ServerAction::ShelveOffload
            | ServerAction::Unshelve { .. }
            | ServerAction::Rescue { .. }
            | ServerAction::Unrescue
    )
}

/// The edge site (a child of this controller) that runs server `s`, if
/// one does: its zone is a site's, and its host is no node of ours.
fn site_running(state: &AppState, s: &Server) -> Result<Option<String>, ApiError> {
    let Some(z) = &s.requested_az else {
        return Ok(None);
    };
    if let Some(h) = &s.host
        && state.store.get::<ComputeNode>(h)?.is_some()
    {
        return Ok(None);
    }
    Ok(state.sites.site_of_zone(&state.store, z)?)
}

/// Runs the server action `b` (`{"name": {...}}`) for `ctx` (whose
/// token is `token`) on server `id`: here, or, for a server an edge site
/// runs and an action only its nodes can carry out, at that site.
pub async fn run(
    state: &AppState,
    ctx: &Ctx,
    token: &str,
    mv: Mv,
    id: &str,
    req_id: &str,
    b: &Value,
) -> Result<Response, ApiError> {
    let (state, id) = (state.clone(), id.to_string());
    let req_id = RequestId(req_id.to_string());
    require_member(ctx, "os_compute_api:servers:action")?;
    let o = b
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad_request("Malformed request body: name exactly one action"))?;
    let (name, arg) = o.iter().next().expect("one key");
    // Make sure the server exists and is visible before anything else.
    let s = fetch(&state, ctx, &id)?;
    match name.as_str() {
        // Network proxies: gone (404) from 2.44.
        "addFixedIp" | "removeFixedIp" | "addFloatingIp" | "removeFloatingIp"
            if mv.at_least(44) =>
        {
            return Err(super::no_such_resource());
        }
        "addFixedIp" | "removeFixedIp" => {
            return Err(ApiError::bad_request(format!(
                "{name} is not supported by this cloud: attach an interface (os-interface) or change the port's fixed_ips through the network API"
            )));
        }
        // Servers are deleted at once (no reclaim interval), so none is
        // ever soft-deleted: these answer as Nova does for any other state.
        "restore" | "forceDelete" => return Err(wrong_state(name, &s)),
        "os-getConsoleOutput" => return console_output(&state, &s, arg).await,
        "os-getSerialConsole" | "os-getVNCConsole" | "os-getSPICEConsole" | "os-getRDPConsole" => {
            return super::consoles::legacy_action(&state, ctx, &s, name, arg).await;
        }
        "os-resetState" if !ctx.is_admin() => {
            return Err(policy_denied("os_compute_api:os-admin-actions:reset_state"));
        }
        "migrate" if !ctx.is_admin() => {
            return Err(policy_denied("os_compute_api:os-migrate-server:migrate"));
        }
        "os-migrateLive" if !ctx.is_admin() => {
            return Err(policy_denied(
                "os_compute_api:os-migrate-server:migrate_live",
            ));
        }
        "evacuate" if !ctx.is_admin() => {
            return Err(policy_denied("os_compute_api:os-evacuate"));
        }
        _ => {}
    }
    let Some(command) = super::parse::action(name, arg, mv)? else {
        return Err(ApiError::bad_request(format!(
            "There is no such action: {name}"
        )));
    };
    if site_carries_out(&command)
        && let Some(site) = site_running(&state, &s)?
    {
        return at_site(&state, ctx, &site, token, mv, &s, &req_id.0, b).await;
    }
    if matches!(
        command,
        ServerAction::CreateImage(_) | ServerAction::CreateBackup(_)
    ) && site_running(&state, &s)?.is_some()
    {
        // The disk is at the site, and image data does not cross a link
        // upwards yet.
        return Err(ApiError::conflict(format!(
            "Cannot '{name}' instance {id} here: it runs at the edge site of zone {}; snapshot it through that site's own API (the image stays at the site)",
            s.requested_az.as_deref().unwrap_or_default()
        )));
    }
    let confirm = matches!(command, ServerAction::ConfirmResize);
    let outcome = super::core::act(&state, ctx, &id, &req_id.0, command)?;
    Ok(match outcome {
        Outcome::Accepted if confirm => StatusCode::NO_CONTENT.into_response(),
        Outcome::Accepted => StatusCode::ACCEPTED.into_response(),
        Outcome::Rescued { admin_pass } => {
            (StatusCode::OK, axum::Json(json!({"adminPass": admin_pass}))).into_response()
        }
        // From 2.14 Nova answers an evacuation with no body.
        Outcome::Evacuated { .. } if mv.at_least(14) => StatusCode::OK.into_response(),
        Outcome::Evacuated { admin_pass } => {
            (StatusCode::OK, axum::Json(json!({"adminPass": admin_pass}))).into_response()
        }
        Outcome::Rebuilt(s) => rebuilt(&state, ctx, mv, &s, arg),
        Outcome::Image { image_id, kept } => {
            let base = &state.config.public_url;
            let location = if name == "createImage" {
                Some(format!("{base}/image/v2/images/{image_id}"))
            } else {
                kept.then(|| format!("{base}/compute/v2.1/images/{image_id}"))
            };
            image_accepted(mv, &image_id, location)
        }
    })
}

/// Asks edge site `site` to carry out action `b` on server `s` (the
/// caller's token goes with it: the site applies its own policy) and
/// answers what the site answered. The action is recorded here too.
#[allow(clippy::too_many_arguments)]
async fn at_site(
    state: &AppState,
    ctx: &Ctx,
    site: &str,
    token: &str,
    mv: Mv,
    s: &Server,
    req_id: &str,
    b: &Value,
) -> Result<Response, ApiError> {
    let req = stratus_wire::sync::TunnelRequest {
        id: uuid::Uuid::new_v4().to_string(),
        kind: "server_action".into(),
        server_id: s.id.clone(),
        action: Some(b.clone()),
        microversion: Some(mv.0),
        token: Some(token.to_string()),
        request_id: Some(req_id.to_string()),
        ..Default::default()
    };
    let a = state
        .sites
        .ask(site, req, std::time::Duration::from_secs(60))
        .await
        .map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m))?;
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if !status.is_success() {
        // The site's own error, in Nova's shape.
        return Err(ApiError::new(status, site_message(&a.body)));
    }
    if let Some(name) = b.as_object().and_then(|o| o.keys().next()) {
        let name = match name.as_str() {
            "os-migrateLive" => "live-migration",
            n => n,
        };
        state.store.write(|tx| match tx.get::<Server>(&s.id)? {
            Some(cur) => super::common::record_action(tx, &cur, name, ctx, req_id),
            None => Ok(()),
        })?;
    }
    let mut resp = (status, a.body).into_response();
    if resp.status() != StatusCode::NO_CONTENT {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(resp)
}

/// The message of a site's error answer (Nova's `{"kind": {"message":
/// ...}}`), or the answer itself.
fn site_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .values()
                .next()?
                .get("message")?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.to_string())
}

/// Carries out at this site an action its parent forwarded (see
/// [`run`]): the caller's token is validated here. Answers the status and
/// body to send back.
pub async fn run_forwarded(
    state: &AppState,
    r: &stratus_wire::sync::TunnelRequest,
) -> (u16, String) {
    let fail = |e: ApiError| (e.status.as_u16(), e.message);
    let (Some(b), Some(token)) = (&r.action, &r.token) else {
        return fail(ApiError::bad_request(
            "A server action needs its body and token",
        ));
    };
    let ctx = match crate::identity::service::validate(state, token, false) {
        Ok(v) => Ctx(v),
        Err(_) => return fail(ApiError::unauthorized()),
    };
    let mv = Mv(r.microversion.unwrap_or(super::MIN_MINOR));
    let rid = r.request_id.clone().unwrap_or_else(|| r.id.clone());
    let resp = match run(state, &ctx, token, mv, &r.server_id, &rid, b).await {
        Ok(resp) => resp,
        Err(e) => return fail(e),
    };
    let status = resp.status().as_u16();
    match axum::body::to_bytes(resp.into_body(), 1 << 20).await {
        Ok(bytes) => (status, String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => (500, String::new()),
    }
}

/// 202; from 2.45 a body with the image id, before it a `Location`.
fn image_accepted(mv: Mv, image_id: &str, location: Option<String>) -> Response {
    if mv.at_least(45) {
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"image_id": image_id})),
        )
            .into_response();
    }
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

/// Rebuild's answer: the server as update shows it, with what rebuild
/// changes at this microversion.
fn rebuilt(state: &AppState, ctx: &Ctx, mv: Mv, s: &Server, arg: &Value) -> Response {
    let mut v = super::servers::basic_view(render(state, ctx, mv, s), mv);
    v = super::servers::with_groups(v, s, mv);
    // Rebuild's answer names the key pair from 2.54 and the user data
    // from 2.57, the two things it may now change (as `user_data`, not
    // the extended attribute).
    if mv.at_least(54) {
        v["key_name"] = json!(s.key_name);
    }
    if mv.at_least(57) {
        v["user_data"] = json!(s.user_data);
        if let Some(o) = v.as_object_mut() {
            o.remove("OS-EXT-SRV-ATTR:user_data");
        }
    }
    // Rebuild's addresses are the plain ones (Nova leaves out the type
    // and MAC extensions here).
    if let Some(nets) = v["addresses"].as_object_mut() {
        for list in nets.values_mut() {
            for a in list.as_array_mut().into_iter().flatten() {
                if let Some(o) = a.as_object_mut() {
                    o.remove("OS-EXT-IPS:type");
                    o.remove("OS-EXT-IPS-MAC:mac_addr");
                }
            }
        }
    }
    v["adminPass"] = json!(admin_pass(arg));
    (StatusCode::ACCEPTED, axum::Json(json!({"server": v}))).into_response()
}

/// `os-getConsoleOutput`: what the workload wrote, fetched from its agent.
async fn console_output(state: &AppState, s: &Server, arg: &Value) -> Result<Response, ApiError> {
    let length = match arg.get("length") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n >= -1)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid input for field/attribute length. Value: {v}. It must be an integer of at least -1")))?;
            if n == -1 { None } else { Some(n as usize) }
        }
    };
    let out = console_text(state, s, length).await?;
    Ok(axum::Json(json!({"output": out})).into_response())
}

/// A server's console log (its last `length` lines): from the agent of
/// its node, or, for a server at an edge site, through the site's own
/// link (the parent never dials a site).
pub async fn console_text(
    state: &AppState,
    s: &Server,
    length: Option<usize>,
) -> Result<String, ApiError> {
    if s.vm_state == vm::BUILDING || s.host.is_none() {
        return Err(wrong_state("get_console_output", s));
    }
    let st = state.clone();
    let server = s.clone();
    let site = tokio::task::spawn_blocking(move || site_running(&st, &server))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    if let Some(site) = site {
        let req = stratus_wire::sync::TunnelRequest {
            id: uuid::Uuid::new_v4().to_string(),
            kind: "console_output".into(),
            server_id: s.id.clone(),
            length: length.map(|n| n as u64),
            ..Default::default()
        };
        let a = state
            .sites
            .ask(&site, req, std::time::Duration::from_secs(30))
            .await
            .map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m))?;
        if a.status == 200 {
            return Ok(a.body);
        }
        let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(ApiError::new(status, a.body));
    }
    let (url, key) = super::agent_client::agent_of(state, s, "get_console_output")?;
    let id = s.id.clone();
    tokio::task::spawn_blocking(move || super::agent_client::console(&url, &key, &id, length))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// `GET /servers/{id}/topology` (2.78): a container has no NUMA
/// topology of its own, which Nova shows as no nodes.
async fn topology(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    if !mv.at_least(78) {
        return Err(super::no_such_resource());
    }
    super::common::require_reader(&ctx, "compute:server:topology:index")?;
    fetch(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"nodes": [], "pagesize_kb": null})))
}

/// `GET /servers/{id}/diagnostics` (admin): the driver's measurements, in
/// the free-form shape Nova used before 2.48.
async fn diagnostics(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-server-diagnostics"));
    }
    let s = fetch(&state, &ctx, &id)?;
    let (url, key) = super::agent_client::agent_of(&state, &s, "get_diagnostics")?;
    let out =
        tokio::task::spawn_blocking(move || super::agent_client::diagnostics(&url, &key, &id))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    if !mv.at_least(48) {
        return Ok(axum::Json(out).into_response());
    }
    let node = state
        .store
        .get::<ComputeNode>(s.host.as_deref().unwrap_or(""))?;
    let vm = state
        .store
        .get::<crate::image::model::Image>(&s.image_ref)?
        .is_some_and(|i| i.boots_vm());
    Ok(axum::Json(standard_diagnostics(node.as_ref(), &s, &out, vm)).into_response())
}

/// 2.48's standard diagnostics, filled from what the driver measured.
/// `driver` names the real driver of this server ("container" or
/// "qemu"), which is not one of Nova's own drivers.
fn standard_diagnostics(node: Option<&ComputeNode>, s: &Server, raw: &Value, vm: bool) -> Value {
    use super::states::power;
    let state = match s.power_state {
        power::RUNNING => "running",
        power::PAUSED => "paused",
        power::SHUTDOWN => "shutdown",
        power::CRASHED => "crashed",
        power::SUSPENDED => "suspended",
        _ => "pending",
    };
    let kib = |k: &str| raw.get(k).and_then(Value::as_u64);
    let uptime = s
        .launched_us
        .map(|t| (crate::timeutil::now_us() - t).max(0) / 1_000_000);
    json!({
        "state": state,
        "driver": match node.map(|n| n.driver.as_str()) {
            Some("fake") => "fake",
            _ if vm => "qemu",
            _ => "container",
        },
        "hypervisor": node.map(|n| n.hypervisor_type.as_str()),
        "hypervisor_os": "linux",
        "uptime": uptime,
        "config_drive": false,
        "num_cpus": s.flavor.vcpus,
        "num_nics": 0,
        "num_disks": 1,
        "memory_details": {
            "maximum": kib("memory").map_or(s.flavor.ram, |k| k / 1024),
            "used": kib("memory-rss").map(|k| k / 1024),
        },
        "cpu_details": [{"id": 0, "time": raw.get("cpu0_time").and_then(Value::as_u64), "utilisation": null}],
        "nic_details": [],
        "disk_details": [{"read_bytes": null, "read_requests": null, "write_bytes": null,
                          "write_requests": null, "errors_count": null}],
    })
}

// ---- os-instance-actions ---------------------------------------------------------------

fn render_action(a: &InstanceAction, with_events: bool, ctx: &Ctx, mv: Mv) -> Value {
    let t = |us: i64| crate::timeutil::iso_naive(us);
    let mut v = json!({
        "action": a.action,
        "instance_uuid": a.server_id,
        "request_id": a.request_id,
        "user_id": a.user_id,
        "project_id": a.project_id,
        "start_time": t(a.start_us),
        "message": a.message,
    });
    if mv.at_least(58) {
        v["updated_at"] = json!(t(a.updated_us));
    }
    if with_events && (ctx.is_admin() || mv.at_least(51)) {
        let ev: Vec<Value> = a
            .events
            .iter()
            .map(|e| {
                let mut x = json!({
                    "event": e.event,
                    "start_time": t(e.start_us),
                    "finish_time": e.finish_us.map(t),
                    "result": e.result,
                });
                if ctx.is_admin() {
                    x["traceback"] = json!(e.traceback);
                }
                // 2.62: where it happened (the host name for admins).
                if mv.at_least(62) {
                    x["hostId"] = json!(e.host.as_deref().map_or(String::new(), |h| {
                        super::common::project_host_id(&a.project_id, h)
                    }));
                    if ctx.is_admin() {
                        x["host"] = json!(e.host.as_deref().unwrap_or(""));
                    }
                }
                // 2.84: what went wrong, for everyone who sees the event.
                // A node's error text names paths and runtime output:
                // members get a plain sentence, admins the first line.
                if mv.at_least(84) {
                    let failed = e.result.as_deref() == Some("Error");
                    let details = match (failed, e.traceback.as_deref()) {
                        (false, _) => None,
                        (true, Some(t)) if ctx.is_admin() || e.host.is_none() => {
                            Some(t.lines().next().unwrap_or("").chars().take(255).collect())
                        }
                        (true, _) => Some(format!(
                            "{} failed on the compute node",
                            e.event.trim_start_matches("compute_")
                        )),
                    };
                    x["details"] = json!(details);
                }
                x
            })
            .collect();
        v["events"] = json!(ev);
    }
    v
}

fn server_for_actions(state: &AppState, ctx: &Ctx, id: &str, mv: Mv) -> Result<(), ApiError> {
    match state.store.get::<Server>(id)? {
        Some(s) if visible(ctx, &s) => Ok(()),
        // 2.21: actions of deleted servers stay readable.
        None if mv.at_least(21) => {
            let acts = state
                .store
                .list::<InstanceAction>(&StoreQuery::parent(id))?;
            if acts
                .iter()
                .any(|a| ctx.is_admin() || ctx.project_id() == Some(a.project_id.as_str()))
            {
                Ok(())
            } else {
                Err(instance_not_found(id))
            }
        }
        _ => Err(instance_not_found(id)),
    }
}

async fn actions_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    server_for_actions(&state, &ctx, &id, mv)?;
    let mut acts = state
        .store
        .list::<InstanceAction>(&StoreQuery::parent(&id))?;
    acts.sort_by_key(|a| std::cmp::Reverse(a.start_us));
    if !mv.at_least(58) {
        let list: Vec<Value> = acts
            .iter()
            .map(|a| render_action(a, false, &ctx, mv))
            .collect();
        return Ok(axum::Json(json!({"instanceActions": list})));
    }
    // 2.58: changes-since (on updated_at), limit and marker (a request id).
    // 2.66: changes-before too.
    let window = super::time_window(&q, mv)?;
    acts.retain(|a| super::in_window(window, a.updated_us));
    let (limit, marker) = super::paging(&q)?;
    if let Some(m) = &marker
        && !acts.iter().any(|a| &a.request_id == m)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Marker {m} could not be found."),
        ));
    }
    let acts = super::page(acts, limit, marker.as_deref(), |a| &a.request_id)?;
    let list: Vec<Value> = acts
        .iter()
        .map(|a| render_action(a, false, &ctx, mv))
        .collect();
    let mut out = json!({ "instanceActions": list });
    if let Some(l) = super::next_link(
        &state,
        &format!("servers/{id}/os-instance-actions"),
        &q,
        limit,
        acts.last().map(|a| a.request_id.as_str()),
        acts.len(),
    ) {
        out["links"] = l;
    }
    Ok(axum::Json(out))
}

async fn action_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, req)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    server_for_actions(&state, &ctx, &id, mv)?;
    let a = state
        .store
        .get::<InstanceAction>(&format!("{id}/{req}"))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Action for request_id {req} on instance {id} not found"),
            )
        })?;
    Ok(axum::Json(
        json!({"instanceAction": render_action(&a, true, &ctx, mv)}),
    ))
}
