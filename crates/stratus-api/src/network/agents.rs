//! `GET /v2.0/agents[/{id}]`: the node agents, which wire ports on their
//! nodes as Neutron's agents do, one per compute node. Admin only, as in
//! Neutron: anyone else sees an empty list. Changing or deleting agents
//! (the `agent` extension) is not offered.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as SQ;

use super::{NetError, NetResult, fields_of, list_answer, reply, require_reader, select_fields};
use crate::AppState;
use crate::compute::model::ComputeNode;
use crate::compute::zones;
use crate::identity::policy::Ctx;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list))
        .route("/agents/{id}", get(show))
        .route("/availability_zones", get(availability_zones))
}

/// `GET /v2.0/availability_zones` (the `availability_zone` extension): the
/// default zone, and each edge site below this controller (its networks'
/// ports are wired there), for networks and routers; a site that is cut
/// off is `unavailable`.
async fn availability_zones(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_availability_zone")?;
    let mut zones = vec![(zones::DEFAULT_ZONE.to_string(), true)];
    zones.extend(state.sites.zones(&state.store)?);
    let mut items = Vec::new();
    for (name, up) in zones {
        for resource in ["network", "router"] {
            items.push(json!({
                "name": name,
                "resource": resource,
                "state": if up { "available" } else { "unavailable" },
            }));
        }
    }
    list_answer(
        &state,
        "availability_zones",
        "availability_zones",
        items,
        &q,
    )
}

/// Neutron's agent timestamp, `2026-12-03 01:48:50`.
fn ts(us: i64) -> String {
    let s = crate::timeutil::iso_us(us);
    s.split_once('.')
        .map_or(s.clone(), |(head, _)| head.to_string())
        .replace('T', " ")
}

fn render(state: &AppState, n: &ComputeNode) -> Value {
    json!({
        "id": n.uuid,
        "agent_type": "Stratus node agent",
        "binary": "stratus-agent",
        "host": n.id,
        "topic": "N/A",
        "admin_state_up": !n.disabled,
        "alive": zones::is_up(state, n),
        "availability_zone": null,
        "configurations": {"driver": n.driver, "tunnel_ip": n.host_ip},
        "created_at": ts(n.created_us),
        "started_at": ts(n.created_us),
        "heartbeat_timestamp": ts(zones::last_seen(state, n)),
        "description": null,
        "resources_synced": null,
    })
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_agent")?;
    let items: Vec<Value> = if ctx.is_admin() {
        state
            .store
            .list::<ComputeNode>(&SQ::all())?
            .iter()
            .map(|n| render(&state, n))
            .collect()
    } else {
        Vec::new()
    };
    list_answer(&state, "agents", "agents", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_agent")?;
    let found = if ctx.is_admin() {
        state
            .store
            .list::<ComputeNode>(&SQ::all())?
            .into_iter()
            .find(|n| n.uuid == id)
    } else {
        None
    };
    let Some(n) = found else {
        return Err(NetError::not_found(
            "AgentNotFound",
            format!("Agent {id} could not be found."),
        ));
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "agent": select_fields(render(&state, &n), &fields_of(&q)) }),
    ))
}
