//! Domain-specific identity configuration (`/v3/domains/{id}/config`) and
//! the defaults it overrides (`/v3/domains/config/default`). Stratus keeps
//! every domain's users in its own store, so these options are recorded
//! and served, not acted on; the API follows Keystone's rules: only the
//! `identity` and `ldap` groups, only whitelisted or sensitive options
//! (the LDAP password is sensitive: stored, never shown), an invalid
//! group or option is a 403 and an absent one a 404.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::model::*;
use super::policy::Ctx;
use crate::json::Json;
use crate::{ApiError, AppState};

/// Options a domain may set and read, with Keystone's defaults.
const IDENTITY: &[(&str, &str)] = &[("driver", r#""sql""#), ("list_limit", "null")];
const LDAP: &[(&str, &str)] = &[
    ("url", r#""ldap://localhost""#),
    ("user", "null"),
    ("suffix", r#""cn=example,cn=com""#),
    ("query_scope", r#""one""#),
    ("page_size", "0"),
    ("alias_dereferencing", r#""default""#),
    ("debug_level", "null"),
    ("chase_referrals", "null"),
    ("user_tree_dn", "null"),
    ("user_filter", "null"),
    ("user_objectclass", r#""inetOrgPerson""#),
    ("user_id_attribute", r#""cn""#),
    ("user_name_attribute", r#""sn""#),
    ("user_mail_attribute", r#""mail""#),
    ("user_description_attribute", r#""description""#),
    ("user_pass_attribute", r#""userPassword""#),
    ("user_enabled_attribute", r#""enabled""#),
    ("user_enabled_invert", "false"),
    ("user_enabled_mask", "0"),
    ("user_enabled_default", r#""True""#),
    ("user_attribute_ignore", r#"["default_project_id"]"#),
    ("user_default_project_id_attribute", "null"),
    ("user_enabled_emulation", "false"),
    ("user_enabled_emulation_dn", "null"),
    ("user_enabled_emulation_use_group_config", "false"),
    ("user_additional_attribute_mapping", "[]"),
    ("group_tree_dn", "null"),
    ("group_filter", "null"),
    ("group_objectclass", r#""groupOfNames""#),
    ("group_id_attribute", r#""cn""#),
    ("group_name_attribute", r#""ou""#),
    ("group_members_are_ids", "false"),
    ("group_member_attribute", r#""member""#),
    ("group_desc_attribute", r#""description""#),
    ("group_attribute_ignore", "[]"),
    ("group_additional_attribute_mapping", "[]"),
    ("tls_cacertfile", "null"),
    ("tls_cacertdir", "null"),
    ("use_tls", "false"),
    ("tls_req_cert", r#""demand""#),
    ("use_pool", "true"),
    ("pool_size", "10"),
    ("pool_retry_max", "3"),
    ("pool_retry_delay", "0.1"),
    ("pool_connection_timeout", "-1"),
    ("pool_connection_lifetime", "600"),
    ("use_auth_pool", "true"),
    ("auth_pool_size", "100"),
    ("auth_pool_connection_lifetime", "60"),
];
/// Options that may be set but are never shown.
const SENSITIVE: &[(&str, &str)] = &[("ldap", "password")];
const GROUPS: &[&str] = &["identity", "ldap"];
/// Readable by anyone for the default domain (Keystone's
/// `get_security_compliance_domain_config`).
const SECURITY_COMPLIANCE: &str = "security_compliance";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/domains/{id}/config",
            get(show_all)
                .put(create)
                .patch(update_all)
                .delete(delete_all),
        )
        .route(
            "/domains/{id}/config/{group}",
            get(show_group).patch(update_group).delete(delete_group),
        )
        .route(
            "/domains/{id}/config/{group}/{option}",
            get(show_option).patch(update_option).delete(delete_option),
        )
        .route("/domains/config/default", get(default_all))
        .route("/domains/config/{group}/default", get(default_group))
        .route(
            "/domains/config/{group}/{option}/default",
            get(default_option),
        )
}

fn whitelist(group: &str) -> &'static [(&'static str, &'static str)] {
    match group {
        "identity" => IDENTITY,
        "ldap" => LDAP,
        _ => &[],
    }
}

fn is_sensitive(group: &str, option: &str) -> bool {
    SENSITIVE.contains(&(group, option))
}

fn is_whitelisted(group: &str, option: &str) -> bool {
    whitelist(group).iter().any(|(o, _)| *o == option)
}

/// Keystone's `InvalidDomainConfig`: a 403.
fn invalid(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("Invalid domain specific configuration: {reason}."),
    )
}

fn not_found(domain_id: &str, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Could not find {what} in domain configuration for domain {domain_id}."),
    )
}

fn check_group_option(group: Option<&str>, option: Option<&str>) -> Result<(), ApiError> {
    let Some(g) = group else { return Ok(()) };
    if !GROUPS.contains(&g) {
        return Err(invalid(format_args!(
            "Group {g} is not supported for domain specific configurations"
        )));
    }
    if let Some(o) = option
        && !is_whitelisted(g, o)
        && !is_sensitive(g, o)
    {
        return Err(invalid(format_args!(
            "Option {o} in group {g} is not supported for domain specific configurations"
        )));
    }
    Ok(())
}

/// Checks the groups and options of a request's config.
fn check_config(config: &Map<String, Value>) -> Result<(), ApiError> {
    if config.is_empty() {
        return Err(invalid("No options specified"));
    }
    for (g, opts) in config {
        match opts.as_object() {
            Some(o) if !o.is_empty() => {
                for k in o.keys() {
                    check_group_option(Some(g), Some(k))?;
                }
            }
            _ => {
                return Err(invalid(format_args!(
                    "The value of group {g} specified in the config should be a dictionary of options"
                )));
            }
        }
    }
    Ok(())
}

/// The `config` object of a request body.
fn body_config(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(mut m) => match m.remove("config") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(c)) => Ok(c),
            Some(_) => Err(ApiError::bad_request(
                "Invalid input for field 'config': it must be an object.",
            )),
        },
        _ => Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        )),
    }
}

/// The visible part of a stored config: sensitive options left out, and
/// groups left empty by that dropped.
fn visible(groups: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (g, opts) in groups {
        let shown: Map<String, Value> = opts
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(o, _)| !is_sensitive(g, o))
            .map(|(o, v)| (o.clone(), v.clone()))
            .collect();
        if !shown.is_empty() {
            out.insert(g.clone(), Value::Object(shown));
        }
    }
    out
}

fn stored(state: &AppState, id: &str) -> Result<Map<String, Value>, ApiError> {
    Ok(state
        .store
        .get::<DomainConfig>(id)?
        .map(|c| c.groups)
        .unwrap_or_default())
}

/// Reads (part of) a domain's config, as Keystone's `get_config`.
fn read(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    group: Option<&str>,
    option: Option<&str>,
) -> Result<Value, ApiError> {
    if group == Some(SECURITY_COMPLIANCE) {
        state.store.fetch::<Domain>(id)?;
        return security_compliance(id, option);
    }
    ctx.allow(ctx.system_reader(), "identity:get_domain_config")?;
    state.store.fetch::<Domain>(id)?;
    check_group_option(group, option)?;
    let all = visible(&stored(state, id)?);
    let found = match (group, option) {
        (None, _) => (!all.is_empty()).then_some(Value::Object(all)),
        (Some(g), None) => all.get(g).map(|v| json!({ g: v })),
        (Some(g), Some(o)) => all.get(g).and_then(|v| v.get(o)).map(|v| json!({ o: v })),
    };
    found.ok_or_else(|| {
        not_found(
            id,
            &match (group, option) {
                (Some(g), Some(o)) => format!("option {o} in group {g}"),
                (Some(g), None) => format!("group {g}"),
                _ => "any options".into(),
            },
        )
    })
}

/// Stratus has no password regex: both readable options are null.
fn security_compliance(id: &str, option: Option<&str>) -> Result<Value, ApiError> {
    if id != DEFAULT_DOMAIN_ID {
        return Err(invalid(
            "Reading security compliance information for any domain other than the default domain is not allowed or supported",
        ));
    }
    match option {
        None => Ok(json!({SECURITY_COMPLIANCE: {
            "password_regex": null, "password_regex_description": null}})),
        Some(o @ ("password_regex" | "password_regex_description")) => Ok(json!({ o: null })),
        Some(_) => Err(invalid(
            "Reading security compliance values other than password_regex and password_regex_description is not allowed",
        )),
    }
}

async fn show_all(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({"config": read(&state, &ctx, &id, None, None)?}),
    ))
}

async fn show_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({"config": read(&state, &ctx, &id, Some(&group), None)?}),
    ))
}

async fn show_option(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group, option)): Path<(String, String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({"config": read(&state, &ctx, &id, Some(&group), Some(&option))?}),
    ))
}

/// `PUT`: replaces the whole config; 201 when there was none, else 200.
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_domain_config")?;
    state.store.fetch::<Domain>(&id)?;
    let config = body_config(body)?;
    check_config(&config)?;
    let existed = state.identity_write(|tx| {
        tx.fetch::<Domain>(&id)?;
        let existed = tx.get::<DomainConfig>(&id)?.is_some();
        tx.upsert(&DomainConfig {
            id: id.clone(),
            groups: config.clone(),
        })?;
        Ok(existed)
    })?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(json!({"config": visible(&config)}))))
}

/// Merges `update` into the stored config. With a group (and option) the
/// update must name exactly that group (option), which must already be set.
fn merge(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    update: Map<String, Value>,
    group: Option<&str>,
    option: Option<&str>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_domain_config")?;
    state.store.fetch::<Domain>(id)?;
    // For one option the body is `{option: value}`; make it a group.
    let update = match (group, option) {
        (Some(g), Some(_)) => {
            let mut m = Map::new();
            m.insert(g.to_string(), Value::Object(update));
            m
        }
        _ => update,
    };
    check_config(&update)?;
    check_group_option(group, option)?;
    if let Some(g) = group {
        let opts = update.get(g).and_then(Value::as_object);
        match (opts, option) {
            (None, _) => {
                return Err(invalid(format_args!(
                    "Trying to update group {g}, so that, and only that, group must be specified in the config"
                )));
            }
            _ if update.len() != 1 => {
                return Err(invalid(format_args!(
                    "Trying to update group {g}, so that, and only that, group must be specified in the config"
                )));
            }
            (Some(o), Some(opt)) if o.len() != 1 || !o.contains_key(opt) => {
                return Err(invalid(format_args!(
                    "Trying to update option {opt} in group {g}, so that, and only that, option must be specified in the config"
                )));
            }
            _ => {}
        }
    }
    let groups = state.identity_write(|tx| {
        tx.fetch::<Domain>(id)?;
        let mut groups = tx
            .get::<DomainConfig>(id)?
            .map(|c| c.groups)
            .unwrap_or_default();
        if let Some(g) = group {
            let current = groups.get(g).and_then(Value::as_object);
            match option {
                Some(o) if current.is_none_or(|c| !c.contains_key(o)) => {
                    return Err(not_found(id, &format!("option {o} in group {g}")));
                }
                None if current.is_none_or(|c| c.is_empty()) => {
                    return Err(not_found(id, &format!("group {g}")));
                }
                _ => {}
            }
        }
        for (g, opts) in update {
            let entry = groups.entry(g).or_insert_with(|| Value::Object(Map::new()));
            if let (Some(e), Value::Object(opts)) = (entry.as_object_mut(), opts) {
                e.extend(opts);
            }
        }
        tx.upsert(&DomainConfig {
            id: id.to_string(),
            groups: groups.clone(),
        })?;
        Ok(groups)
    })?;
    Ok(axum::Json(json!({"config": visible(&groups)})))
}

async fn update_all(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    merge(&state, &ctx, &id, body_config(body)?, None, None)
}

async fn update_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    merge(&state, &ctx, &id, body_config(body)?, Some(&group), None)
}

async fn update_option(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group, option)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    merge(
        &state,
        &ctx,
        &id,
        body_config(body)?,
        Some(&group),
        Some(&option),
    )
}

fn delete(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    group: Option<&str>,
    option: Option<&str>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_domain_config")?;
    state.store.fetch::<Domain>(id)?;
    check_group_option(group, option)?;
    state.identity_write(|tx| {
        let Some(g) = group else {
            tx.delete::<DomainConfig>(id)?;
            return Ok(());
        };
        let mut groups = tx
            .get::<DomainConfig>(id)?
            .map(|c| c.groups)
            .unwrap_or_default();
        let Some(current) = groups.get_mut(g).and_then(Value::as_object_mut) else {
            return Err(not_found(id, &format!("group {g}")));
        };
        match option {
            Some(o) => {
                if current.remove(o).is_none() {
                    return Err(not_found(id, &format!("option {o} in group {g}")));
                }
                if current.is_empty() {
                    groups.remove(g);
                }
            }
            None => {
                groups.remove(g);
            }
        }
        if groups.is_empty() {
            tx.delete::<DomainConfig>(id)?;
        } else {
            tx.upsert(&DomainConfig {
                id: id.to_string(),
                groups,
            })?;
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_all(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &ctx, &id, None, None)
}

async fn delete_group(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &ctx, &id, Some(&group), None)
}

async fn delete_option(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, group, option)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &ctx, &id, Some(&group), Some(&option))
}

// ---- defaults --------------------------------------------------------------------

fn defaults(group: &str) -> Map<String, Value> {
    whitelist(group)
        .iter()
        .map(|(o, v)| {
            (
                o.to_string(),
                serde_json::from_str(v).unwrap_or(Value::Null),
            )
        })
        .collect()
}

async fn default_all(ctx: Ctx) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_domain_config_default")?;
    let all: Map<String, Value> = GROUPS
        .iter()
        .map(|g| (g.to_string(), Value::Object(defaults(g))))
        .collect();
    Ok(axum::Json(json!({"config": all})))
}

async fn default_group(ctx: Ctx, Path(group): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_domain_config_default")?;
    check_group_option(Some(&group), None)?;
    Ok(axum::Json(
        json!({"config": {group.clone(): defaults(&group)}}),
    ))
}

async fn default_option(
    ctx: Ctx,
    Path((group, option)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_domain_config_default")?;
    check_group_option(Some(&group), Some(&option))?;
    let Some(v) = defaults(&group).remove(&option) else {
        return Err(invalid(format_args!(
            "Reading the default for option {option} in group {group} is not supported"
        )));
    };
    Ok(axum::Json(json!({"config": {option: v}})))
}
