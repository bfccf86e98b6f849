//! Helpers that the compute handlers and the core share, at the bottom of
//! the compute layering (see `docs/design-notes.md`): servers and flavors
//! as the caller may see them, the lock check, role checks, instance action
//! records and their events, Nova's error texts and names. They depend on
//! the model only, never on a handler or service module.

use axum::http::StatusCode;
use sha2::Digest;
use stratus_store::{Query as StoreQuery, Tx};

use super::model::{ActionEvent, Flavor, InstanceAction, Migration, Server};
use super::policy_denied;
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub(crate) fn nova_time(us: i64) -> String {
    let s = crate::timeutil::iso_us(us);
    // `2026-11-22T12:00:00Z`: Nova shows seconds only.
    format!("{}Z", &s[..19])
}

pub(crate) fn instance_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Instance {id} could not be found."),
    )
}

/// Nova's `OS-EXT-SRV-ATTR:instance_name` for a server id.
pub(crate) fn instance_name(id: &str) -> String {
    format!("instance-{}", &id[..8.min(id.len())])
}

/// Whether the caller may see `s`: its project's, or any for admins.
pub(crate) fn visible(ctx: &Ctx, s: &Server) -> bool {
    ctx.is_admin() || ctx.project_id() == Some(s.project_id.as_str())
}

/// A server the caller may see, else Nova's 404.
pub(crate) fn fetch(state: &AppState, ctx: &Ctx, id: &str) -> Result<Server, ApiError> {
    match state.store.get::<Server>(id)? {
        Some(s) if visible(ctx, &s) => Ok(s),
        _ => Err(instance_not_found(id)),
    }
}

/// [`fetch`] inside a write transaction.
pub(crate) fn fetch_tx(tx: &Tx, ctx: &Ctx, id: &str) -> Result<Server, ApiError> {
    match tx.get::<Server>(id)? {
        Some(s) if visible(ctx, &s) => Ok(s),
        _ => Err(instance_not_found(id)),
    }
}

/// Readers of the project read; members change.
pub(crate) fn require_member(ctx: &Ctx, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() || ctx.project_id().is_some() && ctx.has_role("member") {
        Ok(())
    } else {
        Err(policy_denied(rule))
    }
}

pub(crate) fn require_reader(ctx: &Ctx, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() || ctx.project_id().is_some() && ctx.has_role("reader") {
        Ok(())
    } else {
        Err(policy_denied(rule))
    }
}

/// A locked server refuses changes from anyone but admins.
pub(crate) fn check_locked(ctx: &Ctx, s: &Server) -> Result<(), ApiError> {
    if s.locked_by.is_some() && !ctx.is_admin() {
        return Err(ApiError::conflict(format!("Instance {} is locked", s.id)));
    }
    Ok(())
}

/// Nova's `hostId`: the host as a project sees it, hashed with the
/// project so that projects cannot compare hosts.
pub(crate) fn project_host_id(project: &str, host: &str) -> String {
    let d = sha2::Sha224::digest(format!("{project}{host}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn bad_field(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for field/attribute {field}. {why}"))
}

/// Starts an `os-instance-actions` record for a request on a server.
pub(crate) fn record_action(
    tx: &Tx,
    s: &Server,
    action: &str,
    ctx: &Ctx,
    request_id: &str,
) -> Result<(), ApiError> {
    record_action_by(tx, s, action, ctx.user_id(), request_id)
}

/// [`record_action`] for a user id (the cloud's own loops name
/// themselves).
pub(crate) fn record_action_by(
    tx: &Tx,
    s: &Server,
    action: &str,
    user_id: &str,
    request_id: &str,
) -> Result<(), ApiError> {
    let now = now_us();
    tx.upsert(&InstanceAction {
        id: format!("{}/{request_id}", s.id),
        server_id: s.id.clone(),
        action: action.into(),
        request_id: request_id.into(),
        user_id: user_id.into(),
        project_id: s.project_id.clone(),
        start_us: now,
        updated_us: now,
        message: None,
        events: vec![],
    })?;
    Ok(())
}

/// Appends an event to the server's latest action.
pub fn action_event(
    tx: &Tx,
    server_id: &str,
    event: &str,
    ok: bool,
    message: Option<&str>,
    host: Option<&str>,
) -> Result<(), ApiError> {
    let mut actions = tx.list::<InstanceAction>(&StoreQuery::parent(server_id))?;
    actions.sort_by_key(|a| a.start_us);
    if let Some(mut a) = actions.pop() {
        let now = now_us();
        a.events.push(ActionEvent {
            event: event.into(),
            start_us: a.start_us,
            finish_us: Some(now),
            result: Some(if ok { "Success" } else { "Error" }.into()),
            traceback: message.map(str::to_string),
            host: host.map(str::to_string),
        });
        if !ok {
            a.message = Some("Error".into());
        }
        a.updated_us = now;
        tx.update(&a)?;
    }
    Ok(())
}

/// Whether the caller may see `f`.
pub(crate) fn flavor_visible(ctx: &Ctx, f: &Flavor) -> bool {
    ctx.is_admin()
        || f.is_public
        || ctx
            .project_id()
            .is_some_and(|p| f.projects.iter().any(|x| x == p))
}

/// A flavor the caller may see, else Nova's 404.
pub(crate) fn fetch_flavor(state: &AppState, ctx: &Ctx, id: &str) -> Result<Flavor, ApiError> {
    match state.store.get::<Flavor>(id)? {
        Some(f) if flavor_visible(ctx, &f) => Ok(f),
        _ => Err(super::not_found("Flavor", id)),
    }
}

/// In the claim's transaction: an evacuation of `server_id` has found its
/// destination (`Some`), or none was found (`None`). See `ha.rs`.
pub(crate) fn evacuation_placed(
    tx: &Tx,
    server_id: &str,
    dest: Option<&str>,
) -> Result<(), ApiError> {
    mark_evacuation(tx, server_id, "accepted", |m| match dest {
        Some(d) => {
            m.dest_compute = d.to_string();
            m.status = "pre-migrating".into();
        }
        None => m.status = "error".into(),
    })
}

/// When the destination reports the rebuild: `done` or `failed`.
pub(crate) fn evacuation_finished(tx: &Tx, server_id: &str, ok: bool) -> Result<(), ApiError> {
    mark_evacuation(tx, server_id, "pre-migrating", |m| {
        m.status = if ok { "done" } else { "failed" }.into();
    })
}

fn mark_evacuation(
    tx: &Tx,
    server_id: &str,
    from: &str,
    f: impl FnOnce(&mut Migration),
) -> Result<(), ApiError> {
    let found = tx
        .list::<Migration>(&StoreQuery::parent(server_id))?
        .into_iter()
        .filter(|m| m.migration_type == "evacuation" && m.status == from)
        .max_by_key(|m| m.seq);
    if let Some(mut m) = found {
        f(&mut m);
        m.updated_us = now_us();
        tx.update(&m)?;
    }
    Ok(())
}
