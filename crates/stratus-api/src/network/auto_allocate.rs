//! The auto-allocated topology (`/v2.0/auto-allocated-topology/{project}`,
//! "Get Me A Network"): on first use a project gets a network
//! `auto_allocated_network` with a subnet `auto_allocated_subnet_v4`, and
//! a router `auto_allocated_router` with its gateway on the default
//! external network (`is_default: true`) and an interface on the subnet.
//!
//! The subnet comes from the default IPv4 subnet pool when there is one.
//! Neutron requires such a pool; here, without one, the subnet is the
//! first `10.0.N.0/24` that does not overlap the external network's
//! subnets (tenant networks may overlap each other: each has its own
//! router).
//!
//! Everything is made in one store transaction, and the topology record
//! (keyed by the project) is read in that same transaction, so concurrent
//! callers, in this process or another controller, get one topology.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;
use stratus_store::{Query as SQ, Tx};

use super::ipam::{Cidr, Ip, default_pools};
use super::model::{AutoTopology, Network, Pool, Router as L3Router, Std, Subnet};
use super::subnetpools::{self, PoolAsk};
use super::{NetError, NetResult, fields_of, networks, new_id, reply, require_member, routers};
use crate::AppState;
use crate::identity::policy::Ctx;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/auto-allocated-topology/{project}",
        get(show).delete(delete),
    )
}

fn failure(reason: &str) -> NetError {
    NetError::conflict(
        "AutoAllocationFailure",
        format!("Deployment error: {reason}."),
    )
}

/// The default external network.
fn default_external(tx: &Tx) -> NetResult<Network> {
    tx.list::<Network>(&SQ::all())?
        .into_iter()
        .find(|n| n.is_default && n.external)
        .ok_or_else(|| failure("No default router:external network"))
}

/// The network of `project`'s auto-allocated topology, made in `tx` if
/// missing; `None` when the cloud has no default external network to
/// build one on (the compute service then boots without a network).
pub fn ensure_in(tx: &Tx, project: &str) -> NetResult<Option<String>> {
    if !tx
        .list::<Network>(&SQ::all())?
        .iter()
        .any(|n| n.is_default && n.external)
    {
        return Ok(None);
    }
    Ok(Some(ensure(tx, project)?.network_id))
}

/// The project's topology, made if missing. Runs in `tx`.
fn ensure(tx: &Tx, project: &str) -> NetResult<AutoTopology> {
    if let Some(t) = tx.get::<AutoTopology>(project)? {
        if tx.exists::<Network>(&t.network_id)? {
            return Ok(t);
        }
        // Its network was deleted under it: start again.
        tx.delete::<AutoTopology>(project)?;
    }
    let ext = default_external(tx)?;
    let net = networks::create_in(tx, project, "auto_allocated_network")?;
    let (cidr, pool_id) = match subnetpools::default_pool(tx, 4)? {
        Some(p) => {
            let ask = PoolAsk {
                pool: Some(p.id.clone()),
                prefixlen: None,
                ip_version: Some(4),
            };
            let (c, id) = subnetpools::carve(tx, None, &ask, project, None)
                .map_err(|_| failure("Unable to provide project private network"))?;
            (c, Some(id))
        }
        None => (fallback_cidr(tx, &ext)?, None),
    };
    super::quotas::check(tx, project, "subnet", 1)?;
    let gateway = cidr.first().offset(1);
    let sub = Subnet {
        id: new_id(),
        network_id: net.id.clone(),
        project_id: project.to_string(),
        name: "auto_allocated_subnet_v4".into(),
        cidr: cidr.to_string(),
        ip_version: 4,
        gateway_ip: Some(gateway.to_string()),
        allocation_pools: default_pools(&cidr, Some(gateway))
            .iter()
            .map(|(s, e)| Pool {
                start: s.to_string(),
                end: e.to_string(),
            })
            .collect(),
        dns_nameservers: Vec::new(),
        host_routes: Vec::new(),
        enable_dhcp: true,
        ipv6_ra_mode: None,
        ipv6_address_mode: None,
        subnetpool_id: pool_id,
        std: Std::new(String::new()),
    };
    tx.insert(&sub)?;
    let gw = routers::GwReq {
        network_id: ext.id.clone(),
        enable_snat: None,
        fixed_ips: None,
    };
    let router = routers::create_in(
        tx,
        None,
        project,
        "auto_allocated_router".into(),
        String::new(),
        true,
        Vec::new(),
        Some(gw),
    )
    .map_err(|e| match e.status {
        StatusCode::BAD_REQUEST => failure("Unable to provide external connectivity"),
        _ => e,
    })?;
    routers::attach_subnet(tx, &router, &sub)?;
    let t = AutoTopology {
        id: project.to_string(),
        network_id: net.id,
        router_id: router.id,
    };
    tx.insert(&t)?;
    Ok(t)
}

/// The first 10.0.N.0/24 clear of the external network's subnets.
fn fallback_cidr(tx: &Tx, ext: &Network) -> NetResult<Cidr> {
    let ext_cidrs: Vec<Cidr> = tx
        .list::<Subnet>(&SQ::parent(&ext.id))?
        .iter()
        .filter_map(|s| Cidr::parse_loose(&s.cidr).map(|(c, _)| c))
        .collect();
    for n in 0..=255u128 {
        let c = Cidr {
            base: Ip {
                v6: false,
                n: (10 << 24) | (n << 8),
            },
            prefix: 24,
        };
        if !ext_cidrs.iter().any(|e| e.overlaps(&c)) {
            return Ok(c);
        }
    }
    Err(failure("Unable to provide project private network"))
}

/// The network of `project_id`'s auto-allocated topology, made (network,
/// subnet, router to the default external network) on first use.
/// Idempotent, and safe under concurrency: all callers get one topology.
/// For the compute service ("Get Me A Network", `networks: auto`).
pub fn auto_allocate(state: &AppState, project_id: &str) -> NetResult<String> {
    let t = state.store.write(|tx| ensure(tx, project_id))?;
    Ok(t.network_id)
}

/// The project the path names (`None`: the caller's), if the caller may
/// act for it.
fn project_of(ctx: &Ctx, asked: &str) -> NetResult<String> {
    let project = if asked == "None" {
        ctx.project_id().unwrap_or_default().to_string()
    } else {
        asked.to_string()
    };
    if !ctx.is_admin() && ctx.project_id() != Some(project.as_str()) {
        return Err(NetError::new(
            StatusCode::FORBIDDEN,
            "NotAuthorized",
            "Not authorized.",
        ));
    }
    Ok(project)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_member(&ctx, "get_auto_allocated_topology")?;
    let project = project_of(&ctx, &project)?;
    let fields = fields_of(&q);
    if fields.iter().any(|f| f == "dry-run") {
        state.store.write(|tx| default_external(tx).map(|_| ()))?;
        return Ok(reply(
            StatusCode::OK,
            json!({"auto_allocated_topology": {"id": "dry-run=pass", "project_id": project}}),
        ));
    }
    if !fields.is_empty() {
        return Err(NetError::bad(
            "BadRequest",
            "Bad auto_allocate request: Unrecognized field.",
        ));
    }
    let id = auto_allocate(&state, &project)?;
    Ok(reply(
        StatusCode::OK,
        json!({"auto_allocated_topology": {"id": id, "project_id": project, "tenant_id": project}}),
    ))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_auto_allocated_topology")?;
    let project = project_of(&ctx, &project)?;
    state.store.write(|tx| {
        let Some(t) = tx.get::<AutoTopology>(&project)? else {
            return Ok(());
        };
        if let Some(r) = tx.get::<L3Router>(&t.router_id)? {
            for p in routers::interfaces(tx, &r.id)? {
                for f in &p.fixed_ips {
                    if let Some(s) = tx.get::<Subnet>(&f.subnet_id)? {
                        routers::detach_subnet(tx, &r, &s)?;
                    }
                }
            }
            routers::delete_in(tx, &r)?;
        }
        if let Some(n) = tx.get::<Network>(&t.network_id)? {
            networks::delete_in(tx, &n)?;
        }
        tx.delete::<AutoTopology>(&project)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}
