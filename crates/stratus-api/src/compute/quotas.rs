//! Compute quotas: `os-quota-sets`, `os-quota-class-sets` and `limits`.
//!
//! Limits resolve as in Nova's DB driver: a user's own limit, else the
//! project's, else the `default` quota class, else the built-in default.
//! Usage is counted from the records themselves (servers, key pairs,
//! server groups) inside the same store transaction that creates more, so
//! a quota can never be overrun by concurrent requests and never drifts.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::model::{ComputeTreeUsage, ComputeUsage, Keypair, QuotaSet, ServerGroup};
use super::{Mv, body, policy_denied};
use crate::identity::model::Project;
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/limits", get(limits))
        .route(
            "/os-quota-sets/{project}",
            get(show).put(update).delete(reset),
        )
        .route("/os-quota-sets/{project}/detail", get(detail))
        .route("/os-quota-sets/{project}/defaults", get(defaults))
        .route(
            "/os-quota-class-sets/{class}",
            get(class_show).put(class_update),
        )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Instances,
    Cores,
    Ram,
    MetadataItems,
    KeyPairs,
    ServerGroups,
    ServerGroupMembers,
}

impl Resource {
    pub fn key(self) -> &'static str {
        match self {
            Resource::Instances => "instances",
            Resource::Cores => "cores",
            Resource::Ram => "ram",
            Resource::MetadataItems => "metadata_items",
            Resource::KeyPairs => "key_pairs",
            Resource::ServerGroups => "server_groups",
            Resource::ServerGroupMembers => "server_group_members",
        }
    }
}

/// Nova's built-in defaults. The network ones (`floating_ips` ...) are
/// only shown before 2.36 and are not enforced here: the network service
/// owns them.
const DEFAULTS: &[(&str, i64)] = &[
    ("instances", 10),
    ("cores", 20),
    ("ram", 51200),
    ("metadata_items", 128),
    ("injected_files", 5),
    ("injected_file_content_bytes", 10240),
    ("injected_file_path_bytes", 255),
    ("key_pairs", 100),
    ("server_groups", 10),
    ("server_group_members", 10),
    ("floating_ips", 10),
    ("fixed_ips", -1),
    ("security_groups", 10),
    ("security_group_rules", 20),
];

/// Personality (file injection) quotas leave the API at 2.57.
fn injected(k: &str) -> bool {
    k.starts_with("injected_file")
}

/// The keys a quota set shows at `mv`.
fn keys(mv: Mv) -> Vec<&'static str> {
    DEFAULTS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !(mv.at_least(57) && injected(k)))
        .filter(|k| {
            !mv.at_least(36)
                || !matches!(
                    *k,
                    "floating_ips" | "fixed_ips" | "security_groups" | "security_group_rules"
                )
        })
        .collect()
}

/// The keys a quota class set shows at `mv`: Nova keeps the network
/// quotas and hides the server group ones until 2.50, then the reverse.
fn class_keys(mv: Mv) -> Vec<&'static str> {
    DEFAULTS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !(mv.at_least(57) && injected(k)))
        .filter(|k| {
            let network = matches!(
                *k,
                "floating_ips" | "fixed_ips" | "security_groups" | "security_group_rules"
            );
            let groups = matches!(*k, "server_groups" | "server_group_members");
            if mv.at_least(50) { !network } else { !groups }
        })
        .collect()
}

fn project_key(p: &str) -> String {
    format!("project/{p}")
}
fn user_key(p: &str, u: &str) -> String {
    format!("user/{p}/{u}")
}
fn class_key(c: &str) -> String {
    format!("class/{c}")
}

/// Every limit of a project (and user), resolved.
fn resolve(
    get: &dyn Fn(&str) -> Result<Option<QuotaSet>, ApiError>,
    project: &str,
    user: Option<&str>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let class = get(&class_key("default"))?;
    let proj = get(&project_key(project))?;
    let usr = match user {
        Some(u) => get(&user_key(project, u))?,
        None => None,
    };
    let mut out = BTreeMap::new();
    for (k, d) in DEFAULTS {
        let v = usr
            .as_ref()
            .and_then(|s| s.limits.get(*k))
            .or_else(|| proj.as_ref().and_then(|s| s.limits.get(*k)))
            .or_else(|| class.as_ref().and_then(|s| s.limits.get(*k)))
            .copied()
            .unwrap_or(*d);
        out.insert((*k).to_string(), v);
    }
    Ok(out)
}

/// One limit, read inside a write transaction.
pub fn limit_tx(tx: &Tx, project: &str, user: Option<&str>, r: Resource) -> Result<i64, ApiError> {
    Ok(limits_tx(tx, project, user)?
        .get(r.key())
        .copied()
        .unwrap_or(-1))
}

/// Every limit, read inside a write transaction: Nova's own, with
/// Keystone's unified limits on `servers`, `class:VCPU` and
/// `class:MEMORY_MB` taking their place as the quota engine orders them
/// (a project's Keystone limit over its quota set, a registered limit
/// over the quota class). A user's own quota set still wins for them.
pub fn limits_tx(
    tx: &Tx,
    project: &str,
    user: Option<&str>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let get = |id: &str| tx.get::<QuotaSet>(id).map_err(ApiError::from);
    let mut out = resolve(&get, project, user)?;
    let usr = match user {
        Some(u) => tx.get::<QuotaSet>(&user_key(project, u))?,
        None => None,
    };
    let proj = tx.get::<QuotaSet>(&project_key(project))?;
    let mut tree = engine::Tree::new(tx);
    for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
        let k = r.key();
        let Some(m) = meter(r) else { continue };
        if usr.as_ref().is_some_and(|s| s.limits.contains_key(k)) {
            continue;
        }
        if let Some(l) = tree.keystone_limit(m, project)? {
            out.insert(k.to_string(), l);
        } else if !proj.as_ref().is_some_and(|s| s.limits.contains_key(k))
            && let Some(l) = tree.registered(m)?
        {
            out.insert(k.to_string(), l);
        }
    }
    Ok(out)
}

fn limits_of(
    state: &AppState,
    project: &str,
    user: Option<&str>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    state.store.write(|tx| limits_tx(tx, project, user))
}

/// What a project (and user) uses now.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub instances: i64,
    pub cores: i64,
    pub ram: i64,
    pub key_pairs: i64,
    pub server_groups: i64,
}

impl Usage {
    pub fn get(&self, key: &str) -> i64 {
        match key {
            "instances" => self.instances,
            "cores" => self.cores,
            "ram" => self.ram,
            "key_pairs" => self.key_pairs,
            "server_groups" => self.server_groups,
            _ => 0,
        }
    }
}

fn count(usage: Option<ComputeUsage>, groups: usize, keys: usize, user: Option<&str>) -> Usage {
    let u = usage.unwrap_or_default();
    let (instances, cores, ram) = match user {
        Some(user) => {
            let x = u.users.get(user).copied().unwrap_or_default();
            (x[0], x[1], x[2])
        }
        None => (u.instances, u.cores, u.ram),
    };
    Usage {
        instances,
        cores,
        ram,
        key_pairs: keys as i64,
        server_groups: groups as i64,
    }
}

/// Usage read inside a write transaction.
pub fn usage_tx(
    tx: &Tx,
    project: &str,
    user: Option<&str>,
    key_user: &str,
) -> Result<Usage, ApiError> {
    let usage = tx.get::<ComputeUsage>(project)?;
    let groups = tx.list::<ServerGroup>(&StoreQuery::owner(project))?.len();
    let keys = tx.list::<Keypair>(&StoreQuery::owner(key_user))?.len();
    Ok(count(usage, groups, keys, user))
}

fn usage(
    state: &AppState,
    project: &str,
    user: Option<&str>,
    key_user: &str,
) -> Result<Usage, ApiError> {
    let usage = state.store.get::<ComputeUsage>(project)?;
    let groups = state
        .store
        .list::<ServerGroup>(&StoreQuery::owner(project))?
        .len();
    let keys = state
        .store
        .list::<Keypair>(&StoreQuery::owner(key_user))?
        .len();
    Ok(count(usage, groups, keys, user))
}

/// Counts a server in (or, with `sign` -1, out of) its project's usage.
pub fn account(
    tx: &Tx,
    project: &str,
    user: &str,
    vcpus: u32,
    ram: u64,
    sign: i64,
) -> Result<(), ApiError> {
    let mut u = tx.get::<ComputeUsage>(project)?.unwrap_or(ComputeUsage {
        id: project.to_string(),
        ..ComputeUsage::default()
    });
    u.add(user, vcpus, ram, sign);
    tx.upsert(&u)?;
    // The running totals of the project and each of its ancestors.
    let mut cur = Some(project.to_string());
    let mut depth = 0;
    while let Some(p) = cur {
        let mut t = tx.get::<ComputeTreeUsage>(&p)?.unwrap_or(ComputeTreeUsage {
            id: p.clone(),
            ..ComputeTreeUsage::default()
        });
        t.instances += sign;
        t.cores += sign * vcpus as i64;
        t.ram += sign * ram as i64;
        tx.upsert(&t)?;
        depth += 1;
        cur = match depth {
            64.. => None,
            _ => tx.get::<Project>(&p)?.and_then(|x| x.parent_id),
        };
    }
    Ok(())
}

/// Rebuilds every project's subtree totals from the per-project usage
/// (at start: a total can drift only if a project went while it had
/// servers).
pub fn rebuild_tree_usage(tx: &Tx) -> Result<(), ApiError> {
    let parents: HashMap<String, Option<String>> = tx
        .list::<Project>(&StoreQuery::all())?
        .into_iter()
        .map(|p| (p.id, p.parent_id))
        .collect();
    let mut totals: HashMap<String, ComputeTreeUsage> = HashMap::new();
    for u in tx.list::<ComputeUsage>(&StoreQuery::all())? {
        let mut cur = Some(u.id.clone());
        let mut depth = 0;
        while let Some(p) = cur {
            let t = totals.entry(p.clone()).or_insert_with(|| ComputeTreeUsage {
                id: p.clone(),
                ..ComputeTreeUsage::default()
            });
            t.instances += u.instances;
            t.cores += u.cores;
            t.ram += u.ram;
            depth += 1;
            cur = if depth >= 64 {
                None
            } else {
                parents.get(&p).cloned().flatten()
            };
        }
    }
    for old in tx.list::<ComputeTreeUsage>(&StoreQuery::all())? {
        match totals.remove(&old.id) {
            Some(t) => {
                if (t.instances, t.cores, t.ram) != (old.instances, old.cores, old.ram) {
                    tx.update(&t)?;
                }
            }
            None => {
                tx.delete::<ComputeTreeUsage>(&old.id)?;
            }
        }
    }
    for t in totals.into_values() {
        tx.insert(&t)?;
    }
    Ok(())
}

/// Nova's over-quota message for a server build.
pub fn exceeded(over: &[(&str, i64, i64, i64)]) -> ApiError {
    // (resource, requested, used, allowed)
    let names: Vec<&str> = over.iter().map(|o| o.0).collect();
    let req: Vec<String> = over.iter().map(|o| o.1.to_string()).collect();
    let used: Vec<String> = over.iter().map(|o| o.2.to_string()).collect();
    let allowed: Vec<String> = over.iter().map(|o| o.3.to_string()).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "Quota exceeded for {}: Requested {}, but already used {} of {} {}",
            names.join(", "),
            req.join(", "),
            used.join(", "),
            allowed.join(", "),
            names.join(", ")
        ),
    )
}

// ---- who may read and set -------------------------------------------------

fn may_read(ctx: &Ctx, project: &str) -> Result<(), ApiError> {
    if ctx.is_admin() || ctx.project_id() == Some(project) {
        Ok(())
    } else {
        Err(policy_denied("os_compute_api:os-quota-sets:show"))
    }
}

fn render(mv: Mv, limits: &BTreeMap<String, i64>, id: Option<&str>) -> Value {
    render_keys(&keys(mv), limits, id)
}

fn render_keys(keys: &[&str], limits: &BTreeMap<String, i64>, id: Option<&str>) -> Value {
    let mut o = Map::new();
    if let Some(id) = id {
        o.insert("id".into(), json!(id));
    }
    for &k in keys {
        o.insert(k.into(), json!(limits.get(k).copied().unwrap_or(-1)));
    }
    Value::Object(o)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, &project)?;
    super::validation::verify_project(&state, &project)?;
    let user = q.get("user_id").map(String::as_str);
    let mut l = limits_of(&state, &project, user)?;
    for (k, f) in tree_figures(&state, &project)? {
        l.insert(k.to_string(), f.limit);
    }
    Ok(axum::Json(
        json!({"quota_set": render(mv, &l, Some(&project))}),
    ))
}

/// Under a tree model: the engine's figures for the resources it
/// enforces, by Nova's quota key (none under `flat`).
fn tree_figures(
    state: &AppState,
    project: &str,
) -> Result<Vec<(&'static str, engine::Figures)>, ApiError> {
    state.store.write(|tx| {
        let mut out = Vec::new();
        if tree_model(tx)? {
            for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
                if let Some(m) = meter(r) {
                    out.push((r.key(), engine::figures(tx, m, project)?));
                }
            }
        }
        Ok(out)
    })
}

async fn detail(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, &project)?;
    super::validation::verify_project(&state, &project)?;
    let user = q.get("user_id").map(String::as_str);
    let l = limits_of(&state, &project, user)?;
    let u = usage(&state, &project, user, user.unwrap_or(ctx.user_id()))?;
    // What the project's leases to edge sites hold back (see `leases`).
    let own = state.sites.own_zone();
    let held = state
        .store
        .write(|tx| super::leases::reserved(tx, own.as_deref(), &project))?;
    let mut o = Map::new();
    o.insert("id".into(), json!(project));
    for k in keys(mv) {
        let reserved = held.get(k).copied().unwrap_or(0);
        o.insert(
            k.into(),
            json!({"limit": l.get(k).copied().unwrap_or(-1), "in_use": u.get(k), "reserved": reserved}),
        );
    }
    // A tree model shows where the project stands in its tree.
    for (k, f) in tree_figures(&state, &project)? {
        o.insert(
            k.into(),
            json!({
                "limit": f.limit, "in_use": f.in_use,
                "reserved": f.reserved + held.get(k).copied().unwrap_or(0),
                "allocated": f.allocated, "borrowed": f.borrowed, "lent": f.lent,
                "free": f.free, "quota_root": f.quota_root,
            }),
        );
    }
    Ok(axum::Json(json!({"quota_set": o})))
}

async fn defaults(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(project): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, &project)?;
    super::validation::verify_project(&state, &project)?;
    let class = state.store.get::<QuotaSet>(&class_key("default"))?;
    let mut l = BTreeMap::new();
    for (k, d) in DEFAULTS {
        let v = class
            .as_ref()
            .and_then(|c| c.limits.get(*k).copied())
            .unwrap_or(*d);
        l.insert((*k).to_string(), v);
    }
    Ok(axum::Json(
        json!({"quota_set": render(mv, &l, Some(&project))}),
    ))
}

/// Validates a `quota_set` body: known keys at this version, integers
/// >= -1. Returns the limits and `force`.
fn parse_set(
    known: &[&str],
    b: &Value,
    allow_force: bool,
) -> Result<(BTreeMap<String, i64>, bool), ApiError> {
    let o = b
        .get("quota_set")
        .or_else(|| b.get("quota_class_set"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute quota_set. 'quota_set' is a required property",
            )
        })?;
    let mut out = BTreeMap::new();
    let mut force = false;
    for (k, v) in o {
        if k == "force" && allow_force {
            force = super::parse_bool(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for field/attribute force. Value: {v}. It is not a boolean"
                ))
            })?;
            continue;
        }
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute quota_set. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
        .filter(|n| *n >= -1 && *n <= i32::MAX as i64)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value: {v}. It must be an integer of at least -1"
            ))
        })?;
        out.insert(k.clone(), n);
    }
    Ok((out, force))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-quota-sets:update"));
    }
    super::validation::verify_project(&state, &project)?;
    let (set, force) = parse_set(&keys(mv), &body(&raw)?, true)?;
    let user = q.get("user_id").cloned();
    let id = match &user {
        Some(u) => user_key(&project, u),
        None => project_key(&project),
    };
    let limits = state.store.write(|tx| {
        if !force {
            let used = usage_tx(tx, &project, user.as_deref(), user.as_deref().unwrap_or(""))?;
            for (k, v) in &set {
                let in_use = used.get(k);
                if *v >= 0 && in_use > *v && k != "key_pairs" {
                    return Err(ApiError::bad_request(format!(
                        "Quota limit {v} for {k} must be greater than or equal to already used and reserved {in_use}."
                    )));
                }
            }
        }
        let mut rec = tx.get::<QuotaSet>(&id)?.unwrap_or(QuotaSet {
            id: id.clone(),
            limits: BTreeMap::new(),
        });
        rec.limits.extend(set.clone());
        tx.upsert(&rec)?;
        if user.is_none() && tree_model(tx)? {
            for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
                if let Some(m) = meter(r)
                    && set.contains_key(r.key())
                {
                    engine::validate(tx, m, &project, force)?;
                }
            }
        }
        limits_tx(tx, &project, user.as_deref())
    })?;
    Ok(axum::Json(json!({"quota_set": render(mv, &limits, None)})))
}

async fn reset(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-quota-sets:delete"));
    }
    let id = match q.get("user_id") {
        Some(u) => user_key(&project, u),
        None => project_key(&project),
    };
    state.store.write(|tx| tx.delete::<QuotaSet>(&id))?;
    Ok(StatusCode::ACCEPTED)
}

async fn class_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(class): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() && !ctx.has_role("reader") {
        return Err(policy_denied("os_compute_api:os-quota-class-sets:show"));
    }
    let rec = state.store.get::<QuotaSet>(&class_key(&class))?;
    let mut l = BTreeMap::new();
    for (k, d) in DEFAULTS {
        l.insert(
            (*k).to_string(),
            rec.as_ref()
                .and_then(|r| r.limits.get(*k).copied())
                .unwrap_or(*d),
        );
    }
    Ok(axum::Json(
        json!({"quota_class_set": render_keys(&class_keys(mv), &l, Some(&class))}),
    ))
}

async fn class_update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(class): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-quota-class-sets:update"));
    }
    if class.chars().count() > 255 {
        return Err(ApiError::bad_request(
            "quota_class_name has more than 255 characters.",
        ));
    }
    let (set, _) = parse_set(&class_keys(mv), &body(&raw)?, false)?;
    let id = class_key(&class);
    let rec = state.store.write(|tx| {
        let mut rec = tx.get::<QuotaSet>(&id)?.unwrap_or(QuotaSet {
            id: id.clone(),
            limits: BTreeMap::new(),
        });
        rec.limits.extend(set.clone());
        tx.upsert(&rec)?;
        Ok::<_, ApiError>(rec)
    })?;
    let mut l = BTreeMap::new();
    for (k, d) in DEFAULTS {
        l.insert((*k).to_string(), rec.limits.get(*k).copied().unwrap_or(*d));
    }
    Ok(axum::Json(
        json!({"quota_class_set": render_keys(&class_keys(mv), &l, None)}),
    ))
}

async fn limits(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let project = match q.get("tenant_id") {
        Some(t) if ctx.is_admin() => t.clone(),
        _ => ctx
            .project_id()
            .ok_or_else(|| policy_denied("os_compute_api:limits"))?
            .to_string(),
    };
    let mut l = limits_of(&state, &project, None)?;
    let mut u = usage(&state, &project, None, ctx.user_id())?;
    for (k, f) in tree_figures(&state, &project)? {
        l.insert(k.to_string(), f.limit);
        match k {
            "instances" => u.instances = f.in_use,
            "cores" => u.cores = f.in_use,
            _ => u.ram = f.in_use,
        }
    }
    let g = |k: &str| l.get(k).copied().unwrap_or(-1);
    let mut abs = json!({
        "maxServerMeta": g("metadata_items"),
        "maxTotalInstances": g("instances"),
        "maxPersonality": g("injected_files"),
        "maxPersonalitySize": g("injected_file_content_bytes"),
        "maxTotalRAMSize": g("ram"),
        "maxServerGroups": g("server_groups"),
        "maxServerGroupMembers": g("server_group_members"),
        "maxTotalKeypairs": g("key_pairs"),
        "maxTotalCores": g("cores"),
        "totalCoresUsed": u.cores,
        "totalRAMUsed": u.ram,
        "totalInstancesUsed": u.instances,
        "totalServerGroupsUsed": u.server_groups,
    });
    let o = abs.as_object_mut().expect("object");
    if !mv.at_least(36) {
        // Proxied from the network service, as Nova does.
        let n = crate::network::quotas::for_nova(&state.store, &project)
            .map_err(|e| ApiError::new(e.status, e.message))?;
        o.insert("maxSecurityGroups".into(), json!(n.security_groups));
        o.insert(
            "maxSecurityGroupRules".into(),
            json!(n.security_group_rules),
        );
        o.insert("maxTotalFloatingIps".into(), json!(n.floating_ips));
        o.insert("totalFloatingIpsUsed".into(), json!(n.floating_ips_used));
        o.insert(
            "totalSecurityGroupsUsed".into(),
            json!(n.security_groups_used),
        );
    }
    if !mv.at_least(39) {
        o.insert("maxImageMeta".into(), json!(128));
    }
    if mv.at_least(57) {
        o.remove("maxPersonality");
        o.remove("maxPersonalitySize");
    }
    Ok(axum::Json(json!({"limits": {"rate": [], "absolute": abs}})))
}

// ---- the quota engine's meters ---------------------------------------------

use crate::identity::quota::{self as engine, Meter};

const COMPUTE: &[&str] = &["compute"];

fn own_of(tx: &Tx, project: &str, key: &str) -> Result<Option<i64>, ApiError> {
    Ok(tx
        .get::<QuotaSet>(&project_key(project))?
        .and_then(|s| s.limits.get(key).copied()))
}

fn default_of(tx: &Tx, key: &str) -> Result<i64, ApiError> {
    let class = tx.get::<QuotaSet>(&class_key("default"))?;
    Ok(class
        .and_then(|c| c.limits.get(key).copied())
        .or_else(|| DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
        .unwrap_or(-1))
}

fn own_all(tx: &Tx, key: &str) -> Result<Vec<(String, i64)>, ApiError> {
    Ok(tx
        .list::<QuotaSet>(&StoreQuery::all())?
        .into_iter()
        .filter_map(|s| {
            let p = s.id.strip_prefix("project/")?.to_string();
            s.limits.get(key).map(|l| (p, *l))
        })
        .collect())
}

fn subtree_of(tx: &Tx, project: &str, r: Resource) -> Result<i64, ApiError> {
    let t = tx.get::<ComputeTreeUsage>(project)?.unwrap_or_default();
    Ok(match r {
        Resource::Instances => t.instances,
        Resource::Cores => t.cores,
        Resource::Ram => t.ram,
        _ => 0,
    })
}

fn used_of(tx: &Tx, project: &str, r: Resource) -> Result<i64, ApiError> {
    let u = tx.get::<ComputeUsage>(project)?.unwrap_or_default();
    Ok(match r {
        Resource::Instances => u.instances,
        Resource::Cores => u.cores,
        Resource::Ram => u.ram,
        _ => 0,
    })
}

/// Servers (Nova's unified-limits name `servers`).
pub static SERVERS: Meter = Meter {
    services: COMPUTE,
    resource: "servers",
    own: |tx, p| own_of(tx, p, "instances"),
    default: |tx| default_of(tx, "instances"),
    used: |tx, p| used_of(tx, p, Resource::Instances),
    own_all: Some(|tx| own_all(tx, "instances")),
    subtree: Some(|tx, p| subtree_of(tx, p, Resource::Instances)),
    reserved_all: Some(|tx| super::leases::reserved_all(tx, "instances")),
};
/// vCPUs (`class:VCPU`).
pub static VCPU: Meter = Meter {
    services: COMPUTE,
    resource: "class:VCPU",
    own: |tx, p| own_of(tx, p, "cores"),
    default: |tx| default_of(tx, "cores"),
    used: |tx, p| used_of(tx, p, Resource::Cores),
    own_all: Some(|tx| own_all(tx, "cores")),
    subtree: Some(|tx, p| subtree_of(tx, p, Resource::Cores)),
    reserved_all: Some(|tx| super::leases::reserved_all(tx, "cores")),
};
/// RAM in MiB (`class:MEMORY_MB`).
pub static MEMORY_MB: Meter = Meter {
    services: COMPUTE,
    resource: "class:MEMORY_MB",
    own: |tx, p| own_of(tx, p, "ram"),
    default: |tx| default_of(tx, "ram"),
    used: |tx, p| used_of(tx, p, Resource::Ram),
    own_all: Some(|tx| own_all(tx, "ram")),
    subtree: Some(|tx, p| subtree_of(tx, p, Resource::Ram)),
    reserved_all: Some(|tx| super::leases::reserved_all(tx, "ram")),
};

/// Every compute meter the engine enforces.
pub static METERS: [&Meter; 3] = [&SERVERS, &VCPU, &MEMORY_MB];

/// The meter of a compute resource the engine enforces.
pub fn meter(r: Resource) -> Option<&'static Meter> {
    match r {
        Resource::Instances => Some(&SERVERS),
        Resource::Cores => Some(&VCPU),
        Resource::Ram => Some(&MEMORY_MB),
        _ => None,
    }
}

/// Whether the deployment enforces through the engine (a model that
/// looks at the project tree).
pub fn tree_model(tx: &Tx) -> Result<bool, ApiError> {
    Ok(engine::model(tx)? != engine::Model::Flat)
}

/// Takes `deltas` through the engine, refusing as Nova words it.
pub fn take(tx: &Tx, project: &str, deltas: &[(Resource, i64)]) -> Result<(), ApiError> {
    for (r, d) in deltas {
        if let Some(m) = meter(*r)
            && *d > 0
        {
            engine::take(tx, m, project, *d).map_err(|o| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Quota exceeded for {}: {}", r.key(), o.why),
                )
            })?;
        }
    }
    Ok(())
}
