//! Network quotas: Neutron's defaults, per-project overrides, and the
//! check made inside the write transaction that creates a resource.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query, Tx};

use super::model::{
    FloatingIp, NetQuota, Network, Port, RbacPolicy, Router as L3Router, SecurityGroup,
    SecurityGroupRule, Subnet, SubnetPool,
};
use super::{NetError, NetResult, reply, require_reader};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::identity::quota::{self as engine, Meter};
use crate::json::Json;

/// Neutron's default quotas.
pub const DEFAULTS: &[(&str, i64)] = &[
    ("network", 100),
    ("subnet", 100),
    ("port", 500),
    ("security_group", 10),
    ("security_group_rule", 100),
    ("router", 10),
    ("floatingip", 50),
    ("subnetpool", -1),
    ("rbac_policy", 10),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/quotas", get(list))
        .route("/quotas/{project}", get(show).put(update).delete(reset))
        .route("/quotas/{project}/default", get(defaults))
        .route("/quotas/{project}/details", get(details))
}

fn defaults_map() -> BTreeMap<String, i64> {
    DEFAULTS.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The limits in force for `project` (defaults plus overrides).
fn limits(over: Option<NetQuota>) -> BTreeMap<String, i64> {
    let mut m = defaults_map();
    if let Some(q) = over {
        m.extend(q.limits);
    }
    m
}

fn count_in(tx: &Tx, project: &str, resource: &str) -> NetResult<usize> {
    let q = Query::owner(project);
    Ok(match resource {
        "network" => tx.list::<Network>(&q)?.len(),
        "subnet" => tx.list::<Subnet>(&q)?.len(),
        "port" => tx.list::<Port>(&q)?.len(),
        "security_group" => tx.list::<SecurityGroup>(&q)?.len(),
        "security_group_rule" => tx.list::<SecurityGroupRule>(&q)?.len(),
        "router" => tx.list::<L3Router>(&q)?.len(),
        "floatingip" => tx.list::<FloatingIp>(&q)?.len(),
        "subnetpool" => tx.list::<SubnetPool>(&q)?.len(),
        "rbac_policy" => tx.list::<RbacPolicy>(&q)?.len(),
        _ => 0,
    })
}

/// The network quotas Nova's limits show before 2.36.
pub struct NovaView {
    pub security_groups: i64,
    pub security_group_rules: i64,
    pub floating_ips: i64,
    pub security_groups_used: usize,
    pub floating_ips_used: usize,
}

/// What Nova's limits show before 2.36 of `project`'s network quotas (as
/// Nova proxies them from Neutron).
pub fn for_nova(store: &stratus_store::Store, project: &str) -> NetResult<NovaView> {
    let l = limits(store.get::<NetQuota>(project)?);
    let g = |k: &str| l.get(k).copied().unwrap_or(-1);
    let q = Query::owner(project);
    Ok(NovaView {
        security_groups: g("security_group"),
        security_group_rules: g("security_group_rule"),
        floating_ips: g("floatingip"),
        security_groups_used: store.list::<SecurityGroup>(&q)?.len(),
        floating_ips_used: store.list::<FloatingIp>(&q)?.len(),
    })
}

/// Refuses with `OverQuota` when `project` already holds its limit of
/// `resource` (plus `adding - 1` more). Runs inside the creating write.
pub fn check(tx: &Tx, project: &str, resource: &str, adding: usize) -> NetResult<()> {
    if let Some(m) = meter(resource)
        && engine::model(tx).map_err(NetError::from)? != engine::Model::Flat
    {
        return engine::take(tx, m, project, adding as i64).map_err(|o| {
            let mut e = NetError::over_quota(resource);
            e.message = format!("{} {}", e.message, o.why);
            e
        });
    }
    let limit = limits(tx.get::<NetQuota>(project)?)
        .get(resource)
        .copied()
        .unwrap_or(-1);
    if limit < 0 {
        return Ok(());
    }
    let n = count_in(tx, project, resource)?;
    if n + adding > limit as usize {
        return Err(NetError::over_quota(resource));
    }
    Ok(())
}

fn may_read(ctx: &Ctx, project: &str) -> NetResult<()> {
    require_reader(ctx, "get_quota")?;
    if ctx.is_admin() || ctx.project_id() == Some(project) {
        Ok(())
    } else {
        Err(NetError::policy("get_quota"))
    }
}

async fn list(State(state): State<AppState>, ctx: Ctx) -> NetResult<Response> {
    ctx.allow(false, "get_quota")
        .map_err(|_| NetError::policy("get_quota"))?;
    let all = state.store.list::<NetQuota>(&Query::all())?;
    let quotas: Vec<Value> = all
        .into_iter()
        .map(|q| {
            let id = q.id.clone();
            let mut v = json!(limits(Some(q)));
            v["project_id"] = json!(id);
            v["tenant_id"] = json!(id);
            v
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({ "quotas": quotas })))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> NetResult<Response> {
    may_read(&ctx, &project)?;
    let q = state.store.get::<NetQuota>(&project)?;
    Ok(reply(StatusCode::OK, json!({ "quota": limits(q) })))
}

async fn defaults(ctx: Ctx, Path(project): Path<String>) -> NetResult<Response> {
    may_read(&ctx, &project)?;
    Ok(reply(StatusCode::OK, json!({ "quota": defaults_map() })))
}

async fn details(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> NetResult<Response> {
    may_read(&ctx, &project)?;
    let lim = limits(state.store.get::<NetQuota>(&project)?);
    let store = state.store.clone();
    let (counts, tree) = store.write(|tx| {
        let mut m = BTreeMap::new();
        for k in lim.keys() {
            m.insert(k.clone(), count_in(tx, &project, k)?);
        }
        // A tree model shows where the project stands in its tree.
        let mut tree = BTreeMap::new();
        if engine::model(tx)? != engine::Model::Flat {
            for meter in METERS {
                tree.insert(meter.resource, engine::figures(tx, meter, &project)?);
            }
        }
        Ok::<_, NetError>((m, tree))
    })?;
    let out: serde_json::Map<String, Value> = lim
        .iter()
        .map(|(k, l)| {
            let v = match tree.get(k.as_str()) {
                Some(f) => json!({
                    "limit": f.limit, "used": f.in_use, "reserved": f.reserved,
                    "allocated": f.allocated, "borrowed": f.borrowed, "lent": f.lent,
                    "free": f.free, "quota_root": f.quota_root,
                }),
                None => {
                    json!({"limit": l, "used": counts.get(k).copied().unwrap_or(0), "reserved": 0})
                }
            };
            (k.clone(), v)
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({ "quota": out })))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("update_quota"));
    }
    let Some(Value::Object(m)) = body.get("quota") else {
        return Err(NetError::bad_request(
            "Unable to find 'quota' in request body",
        ));
    };
    let mut changes = BTreeMap::new();
    for (k, v) in m {
        if !DEFAULTS.iter().any(|(d, _)| d == k) {
            return Err(NetError::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse::<i64>().ok(),
            _ => None,
        }
        .filter(|n| *n >= -1)
        .ok_or_else(|| {
            NetError::bad_request(format!(
                "Invalid input for {k}. Reason: '{v}' is not an integer >= -1."
            ))
        })?;
        changes.insert(k.clone(), n);
    }
    let q = state.store.write(|tx| {
        let mut q = tx.get::<NetQuota>(&project)?.unwrap_or(NetQuota {
            id: project.clone(),
            limits: BTreeMap::new(),
        });
        let keys: Vec<String> = changes.keys().cloned().collect();
        q.limits.extend(changes);
        tx.upsert(&q)?;
        // A tree model keeps allocations inside the parent's limit.
        for k in keys {
            if let Some(m) = meter(&k) {
                engine::validate(tx, m, &project, false)?;
            }
        }
        Ok::<_, NetError>(q)
    })?;
    Ok(reply(StatusCode::OK, json!({ "quota": limits(Some(q)) })))
}

async fn reset(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
) -> NetResult<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("delete_quota"));
    }
    state.store.write(|tx| tx.delete::<NetQuota>(&project))?;
    Ok(super::no_content())
}

// ---- the quota engine's meters ---------------------------------------------

const NETWORK: &[&str] = &["network"];

fn own_of(tx: &Tx, project: &str, key: &str) -> Result<Option<i64>, crate::ApiError> {
    Ok(tx
        .get::<NetQuota>(project)?
        .and_then(|q| q.limits.get(key).copied()))
}

fn default_of(key: &str) -> i64 {
    DEFAULTS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(-1, |(_, v)| *v)
}

fn used_of(tx: &Tx, project: &str, key: &str) -> Result<i64, crate::ApiError> {
    count_in(tx, project, key)
        .map(|n| n as i64)
        .map_err(|e| crate::ApiError::new(e.status, e.message))
}

macro_rules! network_meter {
    ($name:ident, $key:literal) => {
        pub static $name: Meter = Meter {
            services: NETWORK,
            resource: $key,
            own: |tx, p| own_of(tx, p, $key),
            default: |_| Ok(default_of($key)),
            used: |tx, p| used_of(tx, p, $key),
            own_all: None,
            subtree: None,
            reserved_all: None,
        };
    };
}
network_meter!(NETWORKS, "network");
network_meter!(SUBNETS, "subnet");
network_meter!(PORTS, "port");
network_meter!(ROUTERS, "router");
network_meter!(FLOATING_IPS, "floatingip");
network_meter!(SECURITY_GROUPS, "security_group");
network_meter!(SECURITY_GROUP_RULES, "security_group_rule");

/// Every network meter the engine enforces.
pub static METERS: [&Meter; 7] = [
    &NETWORKS,
    &SUBNETS,
    &PORTS,
    &ROUTERS,
    &FLOATING_IPS,
    &SECURITY_GROUPS,
    &SECURITY_GROUP_RULES,
];

fn meter(key: &str) -> Option<&'static Meter> {
    METERS.iter().copied().find(|m| m.resource == key)
}
