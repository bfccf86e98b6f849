//! `/v3/roles` and implied roles (`/v3/roles/{id}/implies`, `/v3/role_inferences`).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as Q, Tx};

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/roles", get(list).post(create))
        .route("/roles/{id}", get(show).patch(update).delete(remove))
        .route("/roles/{id}/implies", get(list_implied))
        .route(
            "/roles/{id}/implies/{implied}",
            get(show_inference)
                .head(check_inference)
                .put(create_inference)
                .delete(delete_inference),
        )
        .route("/role_inferences", get(list_inferences))
}

pub fn view(state: &AppState, r: &Role) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "domain_id": r.domain_id,
        "description": r.description,
        "options": r.options,
        "links": self_link(state, &format!("roles/{}", r.id)),
    })
}

fn brief(state: &AppState, r: &Role) -> Value {
    json!({"id": r.id, "name": r.name, "links": self_link(state, &format!("roles/{}", r.id))})
}

fn may_read(ctx: &Ctx) -> Result<(), ApiError> {
    ctx.allow(
        ctx.system_reader() || ctx.reader_domain().is_some(),
        "identity:list_roles",
    )
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx)?;
    // Without a domain_id filter Keystone lists global roles only.
    let roles = state.store.list::<Role>(&Q::all())?;
    let domain = q.get("domain_id").cloned();
    let items = roles
        .iter()
        .filter(|r| r.domain_id == domain)
        .map(|r| view(&state, r))
        .collect();
    let mut q = q;
    q.remove("domain_id");
    Ok(list_body(&state, "roles", "roles", filter(items, &q)))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_role")?;
    let o = Obj::from_body(body, "role")?;
    let name = o.name("name")?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'role': 'name' is a required property.")
    })?;
    let r = Role {
        id: new_id(),
        name: name.clone(),
        domain_id: o.id_str("domain_id", true)?,
        description: o.str("description")?,
        options: o.object("options")?.unwrap_or_default(),
    };
    state.identity_write(|tx| {
        if let Some(d) = &r.domain_id
            && tx.get::<Domain>(d)?.is_none()
        {
            return Err(ApiError::not_found("domain", d));
        }
        tx.insert(&r).map_err(conflict_as("role", &name))
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"role": view(&state, &r)})),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx)?;
    let r = state.store.fetch::<Role>(&id)?;
    Ok(axum::Json(json!({"role": view(&state, &r)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_role")?;
    let o = Obj::from_body(body, "role")?;
    o.forbid(&["domain_id"])?;
    let r = state.identity_write(|tx| {
        let mut r = tx.fetch::<Role>(&id)?;
        if let Some(n) = o.name("name")? {
            r.name = n;
        }
        if o.has("description") {
            r.description = o.str("description")?;
        }
        if let Some(opts) = o.object("options")? {
            r.options.extend(opts);
        }
        let name = r.name.clone();
        tx.update(&r).map_err(conflict_as("role", &name))?;
        Ok(r)
    })?;
    Ok(axum::Json(json!({"role": view(&state, &r)})))
}

/// Deletes a role with its assignments and inference rules.
pub fn delete_in(tx: &Tx, id: &str) -> Result<(), ApiError> {
    for a in tx.list::<Assignment>(&Q::name(id))? {
        tx.delete::<Assignment>(&a.id)?;
    }
    for i in tx.list::<Inference>(&Q::parent(id))? {
        tx.delete::<Inference>(&i.id)?;
    }
    for i in tx.list::<Inference>(&Q::owner(id))? {
        tx.delete::<Inference>(&i.id)?;
    }
    if !tx.delete::<Role>(id)? {
        return Err(ApiError::not_found("role", id));
    }
    Ok(())
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_role")?;
    state.identity_write(|tx| delete_in(tx, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- implied roles ----------------------------------------------------------

fn inference_pair(state: &AppState, prior: &Role, implied: &Role) -> Value {
    json!({"prior_role": brief(state, prior), "implies": brief(state, implied)})
}

async fn list_implied(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:list_implied_roles")?;
    let prior = state.store.fetch::<Role>(&id)?;
    let mut implies = Vec::new();
    for i in state.store.list::<Inference>(&Q::parent(&id))? {
        if let Some(r) = state.store.get::<Role>(&i.implied_role_id)? {
            implies.push(brief(&state, &r));
        }
    }
    Ok(axum::Json(json!({
        "role_inference": {"prior_role": brief(&state, &prior), "implies": implies},
        "links": self_link(&state, &format!("roles/{id}/implies")),
    })))
}

fn load_pair(state: &AppState, prior: &str, implied: &str) -> Result<(Role, Role), ApiError> {
    Ok((
        state.store.fetch::<Role>(prior)?,
        state.store.fetch::<Role>(implied)?,
    ))
}

fn existing(state: &AppState, prior: &str, implied: &str) -> Result<(Role, Role), ApiError> {
    let pair = load_pair(state, prior, implied)?;
    if state
        .store
        .get::<Inference>(&Inference::new(prior, implied).id)?
        .is_none()
    {
        return Err(ApiError::not_found(
            "implied role",
            &format!("{prior} implies {implied}"),
        ));
    }
    Ok(pair)
}

async fn show_inference(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_implied_role")?;
    let (p, i) = existing(&state, &prior, &implied)?;
    Ok(axum::Json(json!({
        "role_inference": inference_pair(&state, &p, &i),
        "links": self_link(&state, &format!("roles/{prior}/implies/{implied}")),
    })))
}

async fn check_inference(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:check_implied_role")?;
    existing(&state, &prior, &implied)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_inference(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_implied_role")?;
    let (p, i) = load_pair(&state, &prior, &implied)?;
    if p.id == i.id {
        return Err(ApiError::forbidden(
            "identity:create_implied_role (a role cannot imply itself)",
        ));
    }
    if i.name == "admin" && i.domain_id.is_none() {
        return Err(ApiError::forbidden(
            "identity:create_implied_role (the admin role may not be implied)",
        ));
    }
    if p.domain_id.is_none() && i.domain_id.is_some() {
        return Err(ApiError::forbidden(
            "identity:create_implied_role (a global role cannot imply a domain-specific role)",
        ));
    }
    state.identity_write(|tx| {
        // Refuse cycles: `implied` must not already (transitively) imply `prior`.
        let rules = tx.list::<Inference>(&Q::all())?;
        let mut frontier = vec![implied.clone()];
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = frontier.pop() {
            if r == prior {
                return Err(ApiError::forbidden(&format!(
                    "identity:create_implied_role (implication of {implied} by {prior} would form a cycle)"
                )));
            }
            for x in rules.iter().filter(|x| x.prior_role_id == r) {
                if seen.insert(x.implied_role_id.clone()) {
                    frontier.push(x.implied_role_id.clone());
                }
            }
        }
        tx.upsert(&Inference::new(&prior, &implied))?;
        Ok(())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "role_inference": inference_pair(&state, &p, &i),
            "links": self_link(&state, &format!("roles/{prior}/implies/{implied}")),
        })),
    ))
}

async fn delete_inference(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((prior, implied)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_implied_role")?;
    existing(&state, &prior, &implied)?;
    state.identity_write(|tx| {
        tx.delete::<Inference>(&Inference::new(&prior, &implied).id)
            .map_err(Into::into)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_inferences(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:list_role_inference_rules")?;
    let rules = state.store.list::<Inference>(&Q::all())?;
    let mut grouped: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for i in rules {
        if let Some(r) = state.store.get::<Role>(&i.implied_role_id)? {
            grouped
                .entry(i.prior_role_id)
                .or_default()
                .push(brief(&state, &r));
        }
    }
    let mut out = Vec::new();
    for (prior, implies) in grouped {
        if let Some(p) = state.store.get::<Role>(&prior)? {
            out.push(json!({"prior_role": brief(&state, &p), "implies": implies}));
        }
    }
    Ok(axum::Json(json!({
        "role_inferences": out,
        "links": self_link(&state, "role_inferences"),
    })))
}
