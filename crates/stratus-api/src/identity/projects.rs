//! `/v3/projects`: hierarchical projects and their tags.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, flag, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

/// Attributes with a meaning; anything else is kept as an extra attribute.
const KNOWN: &[&str] = &[
    "name",
    "domain_id",
    "parent_id",
    "description",
    "enabled",
    "is_domain",
    "tags",
    "options",
];

/// Keystone's `max_project_tree_depth`.
pub const MAX_DEPTH: usize = 5;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects", get(list).post(create))
        .route("/projects/{id}", get(show).patch(update).delete(remove))
        .route(
            "/projects/{id}/tags",
            get(list_tags).put(replace_tags).delete(clear_tags),
        )
        .route(
            "/projects/{id}/tags/{tag}",
            get(check_tag).put(add_tag).delete(remove_tag),
        )
}

pub fn view(state: &AppState, p: &Project) -> Value {
    let mut v = json!({
        "id": p.id,
        "name": p.name,
        "domain_id": p.domain_id,
        "description": p.description,
        "enabled": p.enabled,
        "parent_id": p.parent_id.clone().unwrap_or_else(|| p.domain_id.clone()),
        "is_domain": false,
        "tags": p.tags,
        "options": p.options,
        "links": self_link(state, &format!("projects/{}", p.id)),
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in &p.extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

/// A domain seen through `/v3/projects`. Keystone stores every domain as
/// a root project with `is_domain: true`; Stratus keeps domains as their
/// own records and shows them this way, so `is_domain` projects are
/// created, listed, read, updated and deleted as domains.
pub fn domain_view(state: &AppState, d: &Domain) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "domain_id": null,
        "description": d.description,
        "enabled": d.enabled,
        "parent_id": null,
        "is_domain": true,
        "tags": d.tags,
        "options": d.options,
        "links": self_link(state, &format!("projects/{}", d.id)),
    })
}

/// The domain `id` when it names no project but a domain.
fn as_domain(state: &AppState, id: &str) -> Result<Option<Domain>, ApiError> {
    if state.store.get::<Project>(id)?.is_some() {
        return Ok(None);
    }
    Ok(state.store.get::<Domain>(id)?)
}

/// May the caller read this project?
fn can_read(ctx: &Ctx, p: &Project) -> bool {
    ctx.can_read_domain_objects(&p.domain_id) || ctx.project_id() == Some(p.id.as_str())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let scope = match (ctx.system_reader(), ctx.reader_domain()) {
        (true, _) => None,
        (false, Some(d)) => Some(d.to_string()),
        (false, None) => return Err(ApiError::forbidden("identity:list_projects")),
    };
    if q.get("is_domain").and_then(|v| super::parse_bool(v)) == Some(true) {
        let items = state
            .store
            .list::<Domain>(&Q::all())?
            .iter()
            .filter(|d| scope.as_deref().is_none_or(|s| s == d.id))
            .map(|d| domain_view(&state, d))
            .collect();
        return Ok(list_body(&state, "projects", "projects", filter(items, &q)));
    }
    let owner = scope.as_deref().or(q.get("domain_id").map(String::as_str));
    let projects = state.store.list::<Project>(&Q {
        owner,
        ..Q::default()
    })?;
    let items = projects.iter().map(|p| view(&state, p)).collect();
    Ok(list_body(&state, "projects", "projects", filter(items, &q)))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_project")?;
    let o = Obj::from_body(body, "project")?;
    let name = o.name_max("name", 64)?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'project': 'name' is a required property.")
    })?;
    if o.bool("is_domain")? == Some(true) {
        return create_domain(&state, &o, name);
    }
    let parent_in = o.id_str("parent_id", true)?;
    let domain_in = o.id_str("domain_id", true)?;
    let p = state.identity_write(|tx| {
        // A parent id may name a domain: that means top level in that domain.
        let parent = match &parent_in {
            Some(pid) if tx.get::<Domain>(pid)?.is_none() => Some(
                tx.get::<Project>(pid)?
                    .ok_or_else(|| ApiError::not_found("project", pid))?,
            ),
            _ => None,
        };
        let domain_id = match (&parent, &parent_in, &domain_in) {
            (Some(pp), _, Some(d)) if *d != pp.domain_id => {
                return Err(ApiError::bad_request(
                    "Cannot create a project whose domain differs from its parent's.",
                ));
            }
            (Some(pp), _, _) => pp.domain_id.clone(),
            (None, Some(dp), Some(d)) if dp != d => {
                return Err(ApiError::bad_request(
                    "The parent_id and domain_id do not agree.",
                ));
            }
            (None, Some(dp), _) => dp.clone(),
            (None, None, Some(d)) => d.clone(),
            (None, None, None) => ctx
                .domain
                .as_ref()
                .map(|d| d.id.clone())
                .or_else(|| ctx.project_domain.as_ref().map(|d| d.id.clone()))
                .unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string()),
        };
        match tx.get::<Domain>(&domain_id)? {
            None => return Err(ApiError::not_found("domain", &domain_id)),
            Some(d) if !d.enabled => {
                return Err(ApiError::bad_request(format!(
                    "Cannot create a project in disabled domain {domain_id}."
                )));
            }
            Some(_) => {}
        }
        if parent.as_ref().is_some_and(|pp| !pp.enabled) {
            return Err(ApiError::bad_request(
                "Cannot create a project under a disabled parent project.",
            ));
        }
        if let Some(pp) = &parent {
            let mut depth = 2; // the new project plus its parent
            let mut cur = pp.parent_id.clone();
            while let Some(id) = cur {
                depth += 1;
                cur = tx.get::<Project>(&id)?.and_then(|x| x.parent_id);
            }
            // The strict two-level quota model allows two levels only.
            let max = if super::quota::model(tx)? == super::quota::Model::StrictTwoLevel {
                2
            } else {
                MAX_DEPTH
            };
            if depth > max {
                return Err(ApiError::forbidden(&format!(
                    "identity:create_project (max hierarchy depth {max} reached)"
                )));
            }
        }
        let p = Project {
            id: new_id(),
            name: name.clone(),
            domain_id,
            description: o.str("description")?.unwrap_or_default(),
            enabled: o.bool("enabled")?.unwrap_or(true),
            parent_id: parent.map(|pp| pp.id),
            tags: o.tags()?.unwrap_or_default(),
            options: o.object("options")?.unwrap_or_default(),
            extra: o.extra(KNOWN),
        };
        tx.insert(&p).map_err(conflict_as("project", &name))?;
        Ok(p)
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"project": view(&state, &p)})),
    ))
}

/// `is_domain: true`: a root "project" that is a domain.
fn create_domain(
    state: &AppState,
    o: &Obj,
    name: String,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    if o.str("parent_id")?.is_some() || o.str("domain_id")?.is_some() {
        return Err(ApiError::bad_request(
            "only root projects are allowed to act as domains.",
        ));
    }
    let d = Domain {
        id: new_id(),
        name: name.clone(),
        description: o.str("description")?.unwrap_or_default(),
        enabled: o.bool("enabled")?.unwrap_or(true),
        tags: o.tags()?.unwrap_or_default(),
        options: o.object("options")?.unwrap_or_default(),
    };
    state.identity_write(|tx| tx.insert(&d).map_err(conflict_as("project", &name)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"project": domain_view(state, &d)})),
    ))
}

fn subtree(all: &[Project], root: &str) -> Vec<Project> {
    let mut out = Vec::new();
    let mut frontier = vec![root.to_string()];
    while let Some(id) = frontier.pop() {
        for p in all
            .iter()
            .filter(|p| p.parent_id.as_deref() == Some(id.as_str()))
        {
            frontier.push(p.id.clone());
            out.push(p.clone());
        }
    }
    out
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    if let Some(d) = as_domain(&state, &id)? {
        ctx.allow(
            ctx.system_reader()
                || ctx.user.domain_id == id
                || ctx.domain.as_ref().is_some_and(|x| x.id == id),
            "identity:get_project",
        )?;
        return Ok(axum::Json(json!({"project": domain_view(&state, &d)})));
    }
    let p = state.store.fetch::<Project>(&id)?;
    ctx.allow(can_read(&ctx, &p), "identity:get_project")?;
    let mut v = view(&state, &p);
    let wrap = |p: &Project| json!({"project": view(&state, p)});
    if flag(&q, "parents_as_list") || flag(&q, "parents_as_ids") {
        let parents = super::service::project_ancestors(&state.store, &p)?;
        if flag(&q, "parents_as_list") {
            v["parents"] = parents
                .iter()
                .filter(|x| can_read(&ctx, x))
                .map(wrap)
                .collect();
        } else {
            // Nested {parent_id: {grandparent_id: null}}, nearest first.
            let mut nested = Value::Null;
            for anc in parents.iter().rev() {
                let mut m = serde_json::Map::new();
                m.insert(anc.id.clone(), nested);
                nested = Value::Object(m);
            }
            v["parents"] = nested;
        }
    }
    if flag(&q, "subtree_as_list") || flag(&q, "subtree_as_ids") {
        let all = state.store.list::<Project>(&Q::owner(&p.domain_id))?;
        let sub = subtree(&all, &p.id);
        if flag(&q, "subtree_as_list") {
            v["subtree"] = sub.iter().filter(|x| can_read(&ctx, x)).map(wrap).collect();
        } else {
            fn nest(all: &[Project], id: &str) -> Value {
                let kids: serde_json::Map<String, Value> = all
                    .iter()
                    .filter(|p| p.parent_id.as_deref() == Some(id))
                    .map(|p| (p.id.clone(), nest(all, &p.id)))
                    .collect();
                if kids.is_empty() {
                    Value::Null
                } else {
                    Value::Object(kids)
                }
            }
            v["subtree"] = nest(&all, &p.id);
        }
    }
    Ok(axum::Json(json!({"project": v})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_project")?;
    let o = Obj::from_body(body, "project")?;
    if as_domain(&state, &id)?.is_some() {
        if o.bool("is_domain")? == Some(false) {
            return Err(ApiError::bad_request(
                "Update of `is_domain` is not allowed.",
            ));
        }
        if o.str("domain_id")?.is_some() || o.str("parent_id")?.is_some() {
            return Err(ApiError::bad_request(
                "Update of `domain_id` or `parent_id` is not allowed for a project acting as a domain.",
            ));
        }
        let d = state.identity_write(|tx| super::domains::update_in(tx, &id, &o))?;
        return Ok(axum::Json(json!({"project": domain_view(&state, &d)})));
    }
    let p = state.identity_write(|tx| {
        let mut p = tx.fetch::<Project>(&id)?;
        if o.str("domain_id")?.is_some_and(|d| d != p.domain_id) {
            return Err(ApiError::bad_request(
                "Update of `domain_id` is not allowed.",
            ));
        }
        if o.str("parent_id")?
            .is_some_and(|x| Some(&x) != p.parent_id.as_ref() && x != p.domain_id)
        {
            return Err(ApiError::forbidden(
                "identity:update_project (update of `parent_id` is not allowed)",
            ));
        }
        if o.bool("is_domain")? == Some(true) {
            return Err(ApiError::bad_request(
                "Update of `is_domain` is not allowed.",
            ));
        }
        if let Some(n) = o.name_max("name", 64)? {
            p.name = n;
        }
        if o.has("description") {
            p.description = o.str("description")?.unwrap_or_default();
        }
        if let Some(e) = o.bool("enabled")? {
            if e && !p.enabled
                && let Some(pid) = &p.parent_id
                && tx.get::<Project>(pid)?.is_some_and(|pp| !pp.enabled)
            {
                return Err(ApiError::forbidden(
                    "identity:update_project (cannot enable a project whose parent is disabled)",
                ));
            }
            if !e
                && p.enabled
                && tx
                    .list::<Project>(&Q::parent(&p.id))?
                    .iter()
                    .any(|c| c.enabled)
            {
                return Err(ApiError::forbidden(
                    "identity:update_project (cannot disable a project with enabled sub-projects)",
                ));
            }
            p.enabled = e;
        }
        if let Some(t) = o.tags()? {
            p.tags = t;
        }
        if let Some(opts) = o.object("options")? {
            p.options.extend(opts);
        }
        o.merge_extra(KNOWN, &mut p.extra);
        let name = p.name.clone();
        tx.update(&p).map_err(conflict_as("project", &name))?;
        Ok(p)
    })?;
    Ok(axum::Json(json!({"project": view(&state, &p)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_project")?;
    if as_domain(&state, &id)?.is_some() {
        state.identity_write(|tx| super::cascade::delete_domain(tx, &id))?;
        return Ok(StatusCode::NO_CONTENT);
    }
    state.identity_write(|tx| super::cascade::delete_project(tx, &id))?;
    state.revoke(Revocation {
        project_id: Some(id),
        issued_before_us: crate::timeutil::now_us(),
        ..Revocation::default()
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tags ----------------------------------------------------------------

fn tags_body(p: &Project) -> axum::Json<Value> {
    axum::Json(json!({"tags": p.tags}))
}

fn read_project(state: &AppState, ctx: &Ctx, id: &str) -> Result<Project, ApiError> {
    let p = state.store.fetch::<Project>(id)?;
    ctx.allow(can_read(ctx, &p), "identity:get_project_tag")?;
    Ok(p)
}

fn edit_tags(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    f: impl FnOnce(&mut Vec<String>) -> Result<(), ApiError>,
) -> Result<Project, ApiError> {
    ctx.require_admin("identity:update_project_tags")?;
    state.identity_write(|tx| {
        let mut p = tx.fetch::<Project>(id)?;
        f(&mut p.tags)?;
        if p.tags.len() > 80 {
            return Err(ApiError::bad_request("A project may have at most 80 tags."));
        }
        tx.update(&p)?;
        Ok(p)
    })
}

fn check_tag_name(tag: &str) -> Result<(), ApiError> {
    if tag.is_empty() || tag.len() > 255 || tag.contains(['/', ',']) {
        return Err(ApiError::bad_request(format!("Invalid tag: {tag}")));
    }
    Ok(())
}

async fn list_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(tags_body(&read_project(&state, &ctx, &id)?))
}

async fn replace_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let tags = Obj::from_body(json!({"project": body}), "project")?
        .tags()?
        .unwrap_or_default();
    let p = edit_tags(&state, &ctx, &id, |t| {
        *t = tags;
        Ok(())
    })?;
    Ok(tags_body(&p))
}

async fn clear_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edit_tags(&state, &ctx, &id, |t| {
        t.clear();
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn check_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let p = read_project(&state, &ctx, &id)?;
    if p.tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("tag", &tag))
    }
}

async fn add_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_tag_name(&tag)?;
    edit_tags(&state, &ctx, &id, |t| {
        if !t.contains(&tag) {
            t.push(tag.clone());
        }
        Ok(())
    })?;
    Ok(StatusCode::CREATED)
}

async fn remove_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    edit_tags(&state, &ctx, &id, |t| {
        let before = t.len();
        t.retain(|x| *x != tag);
        if t.len() == before {
            return Err(ApiError::not_found("tag", &tag));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
