//! Role assignments: grants on projects, domains and the system for users
//! and groups (plus OS-INHERIT grants), and `GET /v3/role_assignments`.

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as Q, Tx};

use super::model::*;
use super::policy::Ctx;
use super::{flag, list_body, roles};
use crate::{ApiError, AppState};

/// Which kind of grant a route manages.
#[derive(Clone, Copy)]
struct Spec {
    target: TargetKind,
    actor: ActorKind,
    inherited: bool,
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for (tname, target) in [
        ("projects", TargetKind::Project),
        ("domains", TargetKind::Domain),
    ] {
        for (aname, actor) in [("users", ActorKind::User), ("groups", ActorKind::Group)] {
            let s = Spec {
                target,
                actor,
                inherited: false,
            };
            r = r
                .route(
                    &format!("/{tname}/{{target}}/{aname}/{{actor}}/roles"),
                    get(move |st, c, p| list_grants(st, c, p, s)),
                )
                .route(
                    &format!("/{tname}/{{target}}/{aname}/{{actor}}/roles/{{role}}"),
                    grant_methods(s),
                );
            let s = Spec {
                target,
                actor,
                inherited: true,
            };
            r = r
                .route(
                    &format!("/OS-INHERIT/{tname}/{{target}}/{aname}/{{actor}}/roles/inherited_to_projects"),
                    get(move |st, c, p| list_grants(st, c, p, s)),
                )
                .route(
                    &format!("/OS-INHERIT/{tname}/{{target}}/{aname}/{{actor}}/roles/{{role}}/inherited_to_projects"),
                    grant_methods(s),
                );
        }
    }
    for (aname, actor) in [("users", ActorKind::User), ("groups", ActorKind::Group)] {
        let s = Spec {
            target: TargetKind::System,
            actor,
            inherited: false,
        };
        r = r
            .route(
                &format!("/system/{aname}/{{actor}}/roles"),
                get(move |st, c, p| list_grants(st, c, p, s)),
            )
            .route(
                &format!("/system/{aname}/{{actor}}/roles/{{role}}"),
                grant_methods(s),
            );
    }
    r.route("/role_assignments", get(list_assignments))
}

fn grant_methods(s: Spec) -> axum::routing::MethodRouter<AppState> {
    get(move |st, c, p| check_grant(st, c, p, s))
        .head(move |st, c, p| check_grant(st, c, p, s))
        .put(move |st, c, p| put_grant(st, c, p, s))
        .delete(move |st, c, p| delete_grant(st, c, p, s))
}

/// Deletes every assignment whose target or actor is `id`.
pub fn delete_touching(tx: &Tx, id: &str) -> Result<(), ApiError> {
    for a in tx.list::<Assignment>(&Q::owner(id))? {
        tx.delete::<Assignment>(&a.id)?;
    }
    for a in tx.list::<Assignment>(&Q::parent(id))? {
        tx.delete::<Assignment>(&a.id)?;
    }
    Ok(())
}

/// Checks that target, actor (and role) exist; returns the assignment.
fn resolve(
    state: &AppState,
    p: &HashMap<String, String>,
    s: Spec,
) -> Result<(String, String), ApiError> {
    let target = match s.target {
        TargetKind::System => SYSTEM_ALL.to_string(),
        TargetKind::Project => state.store.fetch::<Project>(&p["target"])?.id,
        TargetKind::Domain => state.store.fetch::<Domain>(&p["target"])?.id,
    };
    let actor = match s.actor {
        ActorKind::User => state.store.fetch::<User>(&p["actor"])?.id,
        ActorKind::Group => state.store.fetch::<Group>(&p["actor"])?.id,
    };
    Ok((target, actor))
}

fn assignment(
    state: &AppState,
    p: &HashMap<String, String>,
    s: Spec,
) -> Result<Assignment, ApiError> {
    let (target, actor) = resolve(state, p, s)?;
    let role = state.store.fetch::<Role>(&p["role"])?;
    Ok(Assignment::new(
        s.actor,
        &actor,
        s.target,
        &target,
        &role.id,
        s.inherited,
    ))
}

fn may_read(ctx: &Ctx, state: &AppState, a_target: TargetKind, target: &str) -> bool {
    if ctx.system_reader() {
        return true;
    }
    let Some(d) = ctx.reader_domain() else {
        return false;
    };
    match a_target {
        TargetKind::Domain => target == d,
        TargetKind::Project => state
            .store
            .get::<Project>(target)
            .ok()
            .flatten()
            .is_some_and(|p| p.domain_id == d),
        TargetKind::System => false,
    }
}

async fn list_grants(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(p): Path<HashMap<String, String>>,
    s: Spec,
) -> Result<axum::Json<Value>, ApiError> {
    let (target, actor) = resolve(&state, &p, s)?;
    ctx.allow(
        may_read(&ctx, &state, s.target, &target),
        "identity:list_grants",
    )?;
    let mut items = Vec::new();
    for a in state.store.list::<Assignment>(&Q {
        owner: Some(&target),
        parent: Some(&actor),
        ..Q::default()
    })? {
        if a.target == s.target
            && a.actor == s.actor
            && a.inherited == s.inherited
            && let Some(r) = state.store.get::<Role>(&a.role_id)?
        {
            items.push(roles::view(&state, &r));
        }
    }
    Ok(list_body(&state, "roles", "roles", items))
}

async fn check_grant(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(p): Path<HashMap<String, String>>,
    s: Spec,
) -> Result<StatusCode, ApiError> {
    let a = assignment(&state, &p, s)?;
    ctx.allow(
        may_read(&ctx, &state, s.target, &a.target_id),
        "identity:check_grant",
    )?;
    match state.store.get::<Assignment>(&a.id)? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::not_found(
            "role assignment",
            &format!("role {} for {}", a.role_id, a.actor_id),
        )),
    }
}

async fn put_grant(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(p): Path<HashMap<String, String>>,
    s: Spec,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:create_grant")?;
    let a = assignment(&state, &p, s)?;
    state.identity_write(|tx| {
        tx.upsert(&a)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_grant(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(p): Path<HashMap<String, String>>,
    s: Spec,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:revoke_grant")?;
    let a = assignment(&state, &p, s)?;
    let existed = state.identity_write(|tx| Ok(tx.delete::<Assignment>(&a.id)?))?;
    if !existed {
        return Err(ApiError::not_found(
            "role assignment",
            &format!("role {} for {}", a.role_id, a.actor_id),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- GET /v3/role_assignments ---------------------------------------------------

/// One row of the listing, after effective expansion.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Row {
    actor: ActorKind,
    actor_id: String,
    target: TargetKind,
    target_id: String,
    role_id: String,
    inherited: bool,
    via_group: Option<String>,
    prior_role: Option<String>,
}

fn grant_url(state: &AppState, r: &Row, role: &str) -> String {
    let t = match r.target {
        TargetKind::Project => format!("projects/{}", r.target_id),
        TargetKind::Domain => format!("domains/{}", r.target_id),
        TargetKind::System => "system".to_string(),
    };
    let a = match r.actor {
        ActorKind::User => "users",
        ActorKind::Group => "groups",
    };
    let actor = r.via_group.as_deref().unwrap_or(&r.actor_id);
    let a = if r.via_group.is_some() { "groups" } else { a };
    if r.inherited {
        state.identity_url(&format!(
            "OS-INHERIT/{t}/{a}/{actor}/roles/{role}/inherited_to_projects"
        ))
    } else {
        state.identity_url(&format!("{t}/{a}/{actor}/roles/{role}"))
    }
}

async fn list_assignments(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let store = &state.store;
    let effective = flag(&q, "effective");
    let names = flag(&q, "include_names");
    let f_user = q.get("user.id").cloned();
    let f_group = q.get("group.id").cloned();
    let f_role = q.get("role.id").cloned();
    let f_project = q.get("scope.project.id").cloned();
    let f_domain = q.get("scope.domain.id").cloned();
    let f_system = q.contains_key("scope.system");
    let f_inherited = q.contains_key("scope.OS-INHERIT:inherited_to");
    if effective && f_group.is_some() {
        return Err(ApiError::bad_request(
            "Combining effective and group filter will always result in an empty list.",
        ));
    }
    if [f_project.is_some(), f_domain.is_some(), f_system]
        .iter()
        .filter(|x| **x)
        .count()
        > 1
    {
        return Err(ApiError::bad_request(
            "Specify at most one of scope.project.id, scope.domain.id and scope.system.",
        ));
    }
    // Policy: readers of the system see everything, domain readers their
    // domain, and anyone may list their own effective assignments.
    let domain_only = if ctx.system_reader() {
        None
    } else if let Some(d) = ctx.reader_domain() {
        Some(d.to_string())
    } else if f_user.as_deref() == Some(ctx.user_id()) {
        None
    } else {
        return Err(ApiError::forbidden("identity:list_role_assignments"));
    };

    let all = store.list::<Assignment>(&Q::all())?;
    let projects = store.list::<Project>(&Q::all())?;
    let mut rows: Vec<Row> = all
        .into_iter()
        .map(|a| Row {
            actor: a.actor,
            actor_id: a.actor_id,
            target: a.target,
            target_id: a.target_id,
            role_id: a.role_id,
            inherited: a.inherited,
            via_group: None,
            prior_role: None,
        })
        .collect();
    let subtree_of = |root: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut frontier = vec![root.to_string()];
        while let Some(id) = frontier.pop() {
            for p in projects
                .iter()
                .filter(|p| p.parent_id.as_deref() == Some(id.as_str()))
            {
                frontier.push(p.id.clone());
                out.push(p.id.clone());
            }
        }
        out
    };
    if effective {
        let mut expanded = Vec::new();
        for r in rows {
            // Groups become their members.
            let actors: Vec<(String, Option<String>)> = match r.actor {
                ActorKind::User => vec![(r.actor_id.clone(), None)],
                ActorKind::Group => store
                    .list::<Membership>(&Q::parent(&r.actor_id))?
                    .into_iter()
                    .map(|m| (m.user_id, Some(r.actor_id.clone())))
                    .collect(),
            };
            // Inherited grants become grants on every project below.
            let targets: Vec<(TargetKind, String)> = if r.inherited {
                match r.target {
                    TargetKind::Domain => projects
                        .iter()
                        .filter(|p| p.domain_id == r.target_id)
                        .map(|p| (TargetKind::Project, p.id.clone()))
                        .collect(),
                    _ => subtree_of(&r.target_id)
                        .into_iter()
                        .map(|p| (TargetKind::Project, p))
                        .collect(),
                }
            } else {
                vec![(r.target, r.target_id.clone())]
            };
            for (u, via) in &actors {
                for (tk, tid) in &targets {
                    expanded.push(Row {
                        actor: ActorKind::User,
                        actor_id: u.clone(),
                        target: *tk,
                        target_id: tid.clone(),
                        role_id: r.role_id.clone(),
                        inherited: r.inherited,
                        via_group: via.clone(),
                        prior_role: None,
                    });
                }
            }
        }
        // Implied roles appear beside the role that implies them.
        let rules = store.list::<Inference>(&Q::all())?;
        let mut with_implied = Vec::new();
        for r in expanded {
            let mut frontier = vec![r.role_id.clone()];
            let mut seen = HashSet::new();
            while let Some(role) = frontier.pop() {
                for i in rules.iter().filter(|i| i.prior_role_id == role) {
                    if seen.insert(i.implied_role_id.clone()) {
                        frontier.push(i.implied_role_id.clone());
                        with_implied.push(Row {
                            role_id: i.implied_role_id.clone(),
                            prior_role: Some(r.role_id.clone()),
                            ..r.clone()
                        });
                    }
                }
            }
            with_implied.push(r);
        }
        let domain_specific: HashSet<String> = store
            .list::<Role>(&Q::all())?
            .into_iter()
            .filter(|r| r.domain_id.is_some())
            .map(|r| r.id)
            .collect();
        with_implied.retain(|r| !domain_specific.contains(&r.role_id));
        rows = with_implied;
    }
    let include_subtree = flag(&q, "include_subtree");
    let project_set: Option<HashSet<String>> = f_project.as_ref().map(|p| {
        let mut s: HashSet<String> = HashSet::from([p.clone()]);
        if include_subtree {
            s.extend(subtree_of(p));
        }
        s
    });
    let domain_of = |r: &Row| -> Option<String> {
        match r.target {
            TargetKind::Domain => Some(r.target_id.clone()),
            TargetKind::Project => projects
                .iter()
                .find(|p| p.id == r.target_id)
                .map(|p| p.domain_id.clone()),
            TargetKind::System => None,
        }
    };
    let mut seen = HashSet::new();
    rows.retain(|r| {
        f_user
            .as_ref()
            .is_none_or(|u| r.actor == ActorKind::User && r.actor_id == *u)
            && f_group
                .as_ref()
                .is_none_or(|g| r.actor == ActorKind::Group && r.actor_id == *g)
            && f_role.as_ref().is_none_or(|x| r.role_id == *x)
            && project_set
                .as_ref()
                .is_none_or(|s| r.target == TargetKind::Project && s.contains(&r.target_id))
            && f_domain
                .as_ref()
                .is_none_or(|d| r.target == TargetKind::Domain && r.target_id == *d)
            && (!f_system || r.target == TargetKind::System)
            && (!f_inherited || r.inherited)
            && domain_only
                .as_ref()
                .is_none_or(|d| domain_of(r).as_deref() == Some(d.as_str()))
            && seen.insert((
                r.actor_id.clone(),
                r.target_id.clone(),
                r.role_id.clone(),
                r.inherited && !effective,
                r.via_group.clone(),
            ))
    });
    let items = rows
        .iter()
        .map(|r| render(&state, r, names, effective))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(list_body(
        &state,
        "role_assignments",
        "role_assignments",
        items,
    ))
}

fn render(state: &AppState, r: &Row, names: bool, effective: bool) -> Result<Value, ApiError> {
    let store = &state.store;
    let domain_ref = |id: &str| -> Result<Value, ApiError> {
        Ok(match store.get::<Domain>(id)? {
            Some(d) => json!({"id": d.id, "name": d.name}),
            None => json!({"id": id}),
        })
    };
    let mut role = json!({"id": r.role_id});
    if names && let Some(x) = store.get::<Role>(&r.role_id)? {
        role["name"] = json!(x.name);
        if let Some(d) = &x.domain_id {
            role["domain"] = domain_ref(d)?;
        }
    }
    let mut actor = json!({"id": r.actor_id});
    if names {
        match r.actor {
            ActorKind::User => {
                if let Some(u) = store.get::<User>(&r.actor_id)? {
                    actor["name"] = json!(u.name);
                    actor["domain"] = domain_ref(&u.domain_id)?;
                }
            }
            ActorKind::Group => {
                if let Some(g) = store.get::<Group>(&r.actor_id)? {
                    actor["name"] = json!(g.name);
                    actor["domain"] = domain_ref(&g.domain_id)?;
                }
            }
        }
    }
    let mut scope = match r.target {
        TargetKind::System => json!({"system": {"all": true}}),
        TargetKind::Domain => {
            let mut d = json!({"id": r.target_id});
            if names && let Some(x) = store.get::<Domain>(&r.target_id)? {
                d["name"] = json!(x.name);
            }
            json!({"domain": d})
        }
        TargetKind::Project => {
            let mut p = json!({"id": r.target_id});
            if names && let Some(x) = store.get::<Project>(&r.target_id)? {
                p["name"] = json!(x.name);
                p["domain"] = domain_ref(&x.domain_id)?;
            }
            json!({"project": p})
        }
    };
    if r.inherited && !effective {
        scope["OS-INHERIT:inherited_to"] = json!("projects");
    }
    let prior = r.prior_role.as_deref().unwrap_or(&r.role_id);
    let mut links = json!({"assignment": grant_url(state, r, prior)});
    if let Some(g) = &r.via_group {
        links["membership"] =
            json!(state.identity_url(&format!("groups/{g}/users/{}", r.actor_id)));
    }
    if let Some(p) = &r.prior_role {
        links["prior_role"] = json!(state.identity_url(&format!("roles/{p}")));
    }
    let actor_key = match r.actor {
        ActorKind::User => "user",
        ActorKind::Group => "group",
    };
    Ok(json!({"role": role, actor_key: actor, "scope": scope, "links": links}))
}
