//! Tags on networks, subnets, ports, security groups, routers, floating
//! IPs and subnet pools
//! (`/{collection}/{id}/tags[/{tag}]`), and the `tags`, `tags-any`,
//! `not-tags` and `not-tags-any` list filters (in `list_answer`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Record, Tx};

use super::model::{FloatingIp, Network, Port, Router, SecurityGroup, Std, Subnet, SubnetPool};
use super::{NetError, NetResult, owns, reply, require_member, require_reader};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

const MAX_TAG_LEN: usize = 255;

/// Reads a network by id (from the store, or inside a transaction).
type NetLookup<'a> = &'a dyn Fn(&str) -> NetResult<Option<Network>>;

/// A resource that carries tags.
pub trait Tagged: Record + Clone + Send + Sync + 'static {
    fn std_mut(&mut self) -> &mut Std;
    fn project(&self) -> &str;
    fn not_found(id: &str) -> NetError;
    /// Whether the caller may read it (its project's, by default).
    /// `network` looks up a network (for things seen through theirs).
    fn readable(&self, ctx: &Ctx, _network: NetLookup) -> NetResult<bool> {
        Ok(owns(ctx, self.project()))
    }
}

impl Tagged for Network {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::networks::not_found(id)
    }
    fn readable(&self, ctx: &Ctx, _network: NetLookup) -> NetResult<bool> {
        Ok(super::networks::visible(ctx, self))
    }
}

impl Tagged for Subnet {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::subnets::not_found(id)
    }
    fn readable(&self, ctx: &Ctx, network: NetLookup) -> NetResult<bool> {
        Ok(owns(ctx, &self.project_id)
            || network(&self.network_id)?.is_some_and(|n| super::networks::visible(ctx, &n)))
    }
}

impl Tagged for Port {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        NetError::not_found("PortNotFound", format!("Port {id} could not be found."))
    }
}

impl Tagged for SecurityGroup {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::security_groups::not_found(id)
    }
}

impl Tagged for Router {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::routers::not_found(id)
    }
}

impl Tagged for FloatingIp {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::floating_ips::not_found(id)
    }
}

impl Tagged for SubnetPool {
    fn std_mut(&mut self) -> &mut Std {
        &mut self.std
    }
    fn project(&self) -> &str {
        &self.project_id
    }
    fn not_found(id: &str) -> NetError {
        super::subnetpools::not_found(id)
    }
    fn readable(&self, ctx: &Ctx, _network: NetLookup) -> NetResult<bool> {
        Ok(self.shared || owns(ctx, &self.project_id))
    }
}

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .merge(routes_for::<Router>("routers"))
        .merge(routes_for::<FloatingIp>("floatingips"))
        .merge(routes_for::<SubnetPool>("subnetpools"))
        .merge(routes_for::<Network>("networks"))
        .merge(routes_for::<Subnet>("subnets"))
        .merge(routes_for::<Port>("ports"))
        .merge(routes_for::<SecurityGroup>("security-groups"))
}

fn routes_for<T: Tagged>(coll: &str) -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            &format!("/{coll}/{{id}}/tags"),
            get(list::<T>).put(replace::<T>).delete(clear::<T>),
        )
        .route(
            &format!("/{coll}/{{id}}/tags/{{tag}}"),
            get(check::<T>).put(add::<T>).delete(remove::<T>),
        )
}

fn check_tag(t: &str) -> NetResult<()> {
    if t.is_empty() || t.chars().count() > MAX_TAG_LEN {
        return Err(NetError::bad_request(format!(
            "Invalid input for tags. Reason: '{t}' is not a valid tag (1 to {MAX_TAG_LEN} characters)."
        )));
    }
    Ok(())
}

fn tag_not_found(id: &str, tag: &str) -> NetError {
    NetError::not_found(
        "TagNotFound",
        format!("Tag {tag} could not be found for resource {id}."),
    )
}

/// Reads `id` for the caller (404 if it cannot see it), in `tx`.
fn read_in<T: Tagged>(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<T> {
    match tx.get::<T>(id)? {
        Some(r) if r.readable(ctx, &|n| Ok(tx.get::<Network>(n)?))? => Ok(r),
        _ => Err(T::not_found(id)),
    }
}

/// Reads `id` for the caller (404 if it cannot see it).
fn read<T: Tagged>(state: &AppState, ctx: &Ctx, id: &str) -> NetResult<T> {
    match state.store.get::<T>(id)? {
        Some(r) if r.readable(ctx, &|n| Ok(state.store.get::<Network>(n)?))? => Ok(r),
        _ => Err(T::not_found(id)),
    }
}

/// Changes `id`'s tags with `f` in one write; only its project (or admin)
/// may, as Neutron's policy says.
fn change<T: Tagged>(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    f: impl FnOnce(&mut Vec<String>) -> NetResult<()>,
) -> NetResult<Vec<String>> {
    require_member(ctx, "update_tags")?;
    state.store.write(|tx| {
        let mut r = read_in::<T>(tx, ctx, id)?;
        if !owns(ctx, r.project()) {
            return Err(NetError::policy("update_tags"));
        }
        let std = r.std_mut();
        f(&mut std.tags)?;
        std.touch();
        let tags = std.tags.clone();
        tx.update(&r)?;
        Ok(tags)
    })
}

async fn list<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_tags")?;
    let mut r = read::<T>(&state, &ctx, &id)?;
    Ok(reply(StatusCode::OK, json!({ "tags": r.std_mut().tags })))
}

async fn check<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_tag")?;
    let mut r = read::<T>(&state, &ctx, &id)?;
    if r.std_mut().tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(tag_not_found(&id, &tag))
    }
}

async fn replace<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    let Some(Value::Array(items)) = body.get("tags") else {
        return Err(NetError::bad_request(
            "Invalid input for tags. Reason: a list of tags is required.",
        ));
    };
    let mut tags: Vec<String> = Vec::new();
    for t in items {
        let t = t.as_str().ok_or_else(|| {
            NetError::bad_request(format!(
                "Invalid input for tags. Reason: '{t}' is not a string."
            ))
        })?;
        check_tag(t)?;
        if !tags.iter().any(|x| x == t) {
            tags.push(t.to_string());
        }
    }
    let tags = change::<T>(&state, &ctx, &id, |cur| {
        *cur = tags;
        Ok(())
    })?;
    Ok(reply(StatusCode::OK, json!({ "tags": tags })))
}

async fn clear<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    change::<T>(&state, &ctx, &id, |cur| {
        cur.clear();
        Ok(())
    })?;
    Ok(super::no_content())
}

async fn add<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> NetResult<Response> {
    check_tag(&tag)?;
    change::<T>(&state, &ctx, &id, |cur| {
        if !cur.contains(&tag) {
            cur.push(tag.clone());
        }
        Ok(())
    })?;
    Ok(StatusCode::CREATED.into_response())
}

async fn remove<T: Tagged>(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> NetResult<Response> {
    change::<T>(&state, &ctx, &id, |cur| {
        let before = cur.len();
        cur.retain(|t| t != &tag);
        if cur.len() == before {
            return Err(tag_not_found(&id, &tag));
        }
        Ok(())
    })?;
    Ok(super::no_content())
}
