//! RBAC policies on networks (`/v2.0/rbac-policies`): `access_as_shared`
//! lets a target project (or `*`, everyone) see a private network and
//! create ports on it; `access_as_external` makes a network external for
//! the target (a router gateway and floating IPs may use it).
//!
//! The policies are records of their own; each write also refreshes the
//! network's `rbac_shared` / `rbac_external` lists in the same
//! transaction, so `networks::visible` reads them without a lookup.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as SQ, Tx};

use super::model::{FloatingIp, Network, Port, RbacPolicy, Router as L3Router};
use super::networks::{self, granted};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_str, owns, reply, require_member,
    require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

const SHARED: &str = "access_as_shared";
const EXTERNAL: &str = "access_as_external";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rbac-policies", get(list).post(create))
        .route("/rbac-policies/{id}", get(show).put(update).delete(delete))
}

fn not_found(id: &str) -> NetError {
    NetError::not_found(
        "RbacPolicyNotFound",
        format!("RBAC policy of type network with ID {id} not found"),
    )
}

fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<RbacPolicy> {
    match tx.get::<RbacPolicy>(id)? {
        Some(r) if owns(ctx, &r.project_id) => Ok(r),
        _ => Err(not_found(id)),
    }
}

/// Rewrites network `id`'s RBAC target lists from its policies.
fn sync_network(tx: &Tx, id: &str) -> NetResult<()> {
    let Some(mut n) = tx.get::<Network>(id)? else {
        return Ok(());
    };
    let policies = tx.list::<RbacPolicy>(&SQ::parent(id))?;
    let targets = |action: &str| -> Vec<String> {
        let mut v: Vec<String> = policies
            .iter()
            .filter(|p| p.action == action)
            .map(|p| p.target_tenant.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    n.rbac_shared = targets(SHARED);
    n.rbac_external = targets(EXTERNAL);
    tx.update(&n)?;
    Ok(())
}

/// Refuses to drop policy `old` while a project that would lose access
/// through it still uses the network (Neutron's `RbacPolicyInUse`).
fn check_not_in_use(tx: &Tx, old: &RbacPolicy) -> NetResult<()> {
    let Some(n) = tx.get::<Network>(&old.object_id)? else {
        return Ok(());
    };
    let rest: Vec<RbacPolicy> = tx
        .list::<RbacPolicy>(&SQ::parent(&n.id))?
        .into_iter()
        .filter(|p| p.id != old.id && p.action == old.action)
        .map(|p| p.target_tenant)
        .map(|t| RbacPolicy {
            target_tenant: t,
            ..old.clone()
        })
        .collect();
    let still: Vec<String> = rest.into_iter().map(|p| p.target_tenant).collect();
    let loses = |project: &str| {
        !project.is_empty()
            && project != n.project_id
            && (old.target_tenant == "*" || old.target_tenant == project)
            && !granted(&still, Some(project))
            && !(old.action == SHARED && n.shared)
            && !(old.action == EXTERNAL && n.external)
    };
    let mut users: Vec<String> = Vec::new();
    if old.action == SHARED {
        users.extend(
            tx.list::<Port>(&SQ::parent(&n.id))?
                .into_iter()
                .filter(|p| !p.network_owned())
                .map(|p| p.project_id),
        );
    } else {
        users.extend(
            tx.list::<L3Router>(&SQ::all())?
                .into_iter()
                .filter(|r| r.gateway.as_ref().is_some_and(|g| g.network_id == n.id))
                .map(|r| r.project_id),
        );
        users.extend(
            tx.list::<FloatingIp>(&SQ::all())?
                .into_iter()
                .filter(|f| f.floating_network_id == n.id)
                .map(|f| f.project_id),
        );
    }
    if let Some(u) = users.iter().find(|u| loses(u)) {
        return Err(NetError::conflict(
            "RbacPolicyInUse",
            format!(
                "RBAC policy on object {} cannot be removed because other objects depend on it.\nDetails: project {u} uses the network",
                n.id
            ),
        ));
    }
    Ok(())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_rbac_policy")?;
    let items: Vec<Value> = state
        .store
        .list::<RbacPolicy>(&SQ::all())?
        .iter()
        .filter(|r| owns(&ctx, &r.project_id))
        .map(RbacPolicy::render)
        .collect();
    list_answer(&state, "rbac_policies", "rbac-policies", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_rbac_policy")?;
    let r = state.store.write(|tx| find_in(tx, &ctx, &id))?;
    Ok(reply(
        StatusCode::OK,
        json!({ "rbac_policy": select_fields(r.render(), &fields_of(&q)) }),
    ))
}

const CREATE_ATTRS: &[&str] = &[
    "object_type",
    "object_id",
    "action",
    "target_tenant",
    "target_project",
    "project_id",
    "tenant_id",
];

fn check_target(ctx: &Ctx, target: &str, action: &str) -> NetResult<()> {
    if target == "*" && !ctx.is_admin() {
        return Err(NetError::policy(&format!("{action}:target_tenant")));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_rbac_policy")?;
    let m = resource_body(body, "rbac_policy", CREATE_ATTRS)?;
    let project = target_project(&ctx, &m, "create_rbac_policy")?;
    let required = |a: &str| {
        NetError::bad_request(format!(
            "Failed to parse request. Required attribute '{a}' not specified"
        ))
    };
    let object_type = opt_str(&m, "object_type")?.ok_or_else(|| required("object_type"))?;
    if object_type != "network" {
        return Err(NetError::bad_request(format!(
            "Invalid input for object_type. Reason: '{object_type}' is not in ['network']."
        )));
    }
    let object_id = opt_str(&m, "object_id")?.ok_or_else(|| required("object_id"))?;
    let action = opt_str(&m, "action")?.ok_or_else(|| required("action"))?;
    if action != SHARED && action != EXTERNAL {
        return Err(NetError::bad_request(format!(
            "Invalid input for action. Reason: '{action}' is not in ['{SHARED}', '{EXTERNAL}']."
        )));
    }
    if action == EXTERNAL && !ctx.is_admin() {
        return Err(NetError::policy("create_rbac_policy:action"));
    }
    let target = opt_str(&m, "target_tenant")?
        .or(opt_str(&m, "target_project")?)
        .ok_or_else(|| required("target_tenant"))?;
    check_target(&ctx, &target, "create_rbac_policy")?;
    let r = state.store.write(|tx| {
        let n = networks::find_in(tx, &ctx, &object_id)?;
        if !owns(&ctx, &n.project_id) {
            return Err(NetError::invalid(
                "Only admins can manipulate policies on networks they do not own",
            ));
        }
        if tx
            .list::<RbacPolicy>(&SQ::parent(&n.id))?
            .iter()
            .any(|p| p.action == action && p.target_tenant == target)
        {
            return Err(NetError::conflict(
                "DuplicateRbacPolicy",
                "An RBAC policy already exists with those values.",
            ));
        }
        super::quotas::check(tx, &project, "rbac_policy", 1)?;
        let r = RbacPolicy {
            id: new_id(),
            project_id: project.clone(),
            object_type: object_type.clone(),
            object_id: n.id.clone(),
            action: action.clone(),
            target_tenant: target.clone(),
        };
        tx.insert(&r)?;
        sync_network(tx, &n.id)?;
        Ok::<_, NetError>(r)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "rbac_policy": r.render() }),
    ))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_rbac_policy")?;
    let m = resource_body(body, "rbac_policy", &["target_tenant", "target_project"])?;
    let target = opt_str(&m, "target_tenant")?.or(opt_str(&m, "target_project")?);
    let r = state.store.write(|tx| {
        let mut r = find_in(tx, &ctx, &id)?;
        if let Some(t) = &target
            && t != &r.target_tenant
        {
            check_target(&ctx, t, "update_rbac_policy")?;
            check_not_in_use(tx, &r)?;
            r.target_tenant = t.clone();
            tx.update(&r)?;
            sync_network(tx, &r.object_id)?;
        }
        Ok::<_, NetError>(r)
    })?;
    Ok(reply(StatusCode::OK, json!({ "rbac_policy": r.render() })))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_rbac_policy")?;
    state.store.write(|tx| {
        let r = find_in(tx, &ctx, &id)?;
        check_not_in_use(tx, &r)?;
        tx.delete::<RbacPolicy>(&r.id)?;
        sync_network(tx, &r.object_id)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}
