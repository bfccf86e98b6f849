//! Identity: Keystone v3 under `/identity`.
//!
//! - `model`: the stored records; `service`: authentication, effective
//!   roles, token validation and rendering, bootstrap;
//! - `fernet`, `token`, `password`: crypto;
//! - `policy`: who may do what (Keystone's default policy);
//! - one module per resource family with its routes and handlers
//!   (`policies`, `oauth1`, `ep_filter`, `domain_config`, `trusts` and
//!   `access_rules` for the extensions other services and Tempest expect).

pub mod access_rules;
pub mod app_creds;
pub mod assignments;
pub mod auth;
pub mod bootstrap;
pub mod cascade;
pub mod catalog;
pub mod credentials;
pub mod domain_config;
pub mod domains;
pub mod ep_filter;
pub mod fernet;
pub mod groups;
pub mod limits;
pub mod model;
pub mod node_users;
pub mod oauth1;
pub mod password;
pub mod policies;
pub mod policy;
pub mod projects;
pub mod quota;
pub mod roles;
pub mod service;
pub mod token;
pub mod trusts;
pub mod users;
pub mod views;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query, Store, StoreError, Tx};

use crate::{ApiConfig, ApiError, AppState};
use model::Revocation;

/// Identity's long-lived state: keys, revocations and the validation cache.
pub struct Identity {
    keys_dir: PathBuf,
    keys: RwLock<Arc<fernet::KeyRing>>,
    keys_seen: Mutex<Option<SystemTime>>,
    revocations: RwLock<Vec<Revocation>>,
    /// Bumped after every identity write; cached validations from an older
    /// epoch are recomputed, so a role change or revocation is seen at once.
    epoch: AtomicU64,
    cache: RwLock<HashMap<String, Arc<service::Validated>>>,
    pub hashing: password::Hashing,
    pub token_ttl_us: i64,
    /// The keys that seal credential blobs at rest.
    pub credential_keys: credentials::CredentialKeys,
}

/// The kinds a token validation depends on: a change to one of them drops
/// cached validations.
const IDENTITY_KINDS: &[&str] = &[
    "user",
    "project",
    "domain",
    "role",
    "role_assignment",
    "implied_role",
    "group",
    "group_membership",
    "application_credential",
    "access_rule",
    "trust",
    "revocation_event",
    "service",
    "endpoint",
    "region",
    "endpoint_group",
    "project_endpoint",
    "project_endpoint_group",
];

/// Validations kept; each holds the rendered token (a few KiB with catalog).
const CACHE_MAX: usize = 4096;

impl Identity {
    pub fn open(config: &ApiConfig, store: Arc<Store>) -> Result<Self, ApiError> {
        let keys_dir = config.data_dir.join("fernet-keys");
        fernet::setup(&keys_dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let ring =
            fernet::KeyRing::load(&keys_dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let revocations = store.list::<Revocation>(&Query::all())?;
        let credential_keys = credentials::CredentialKeys::open(&config.data_dir)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Identity {
            credential_keys,
            keys_seen: Mutex::new(dir_mtime(&keys_dir)),
            keys_dir,
            keys: RwLock::new(Arc::new(ring)),
            revocations: RwLock::new(revocations),
            epoch: AtomicU64::new(1),
            cache: RwLock::new(HashMap::new()),
            hashing: password::Hashing::new(std::time::Duration::from_secs(config.login_cache_s)),
            token_ttl_us: config.token_expiration_s as i64 * 1_000_000,
        })
    }

    pub fn keys(&self) -> Arc<fernet::KeyRing> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the key repository if it changed on disk (after
    /// `stratus admin fernet-rotate`). Cheap: one `stat`.
    pub fn refresh_keys(&self) {
        let now = dir_mtime(&self.keys_dir);
        let mut seen = self.keys_seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return;
        }
        match fernet::KeyRing::load(&self.keys_dir) {
            Ok(ring) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
                *seen = now;
                // Tokens whose key was rotated out must stop validating.
                self.invalidate();
                tracing::info!(dir = %self.keys_dir.display(), "reloaded fernet keys");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload fernet keys; keeping the old ones")
            }
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks every cached validation stale.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn cached(&self, token: &str) -> Option<Arc<service::Validated>> {
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        c.get(token).cloned()
    }

    fn remember(&self, token: &str, v: Arc<service::Validated>) {
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if c.len() >= CACHE_MAX {
            let now = crate::timeutil::now_us();
            c.retain(|_, v| v.data.expires_us > now);
            if c.len() >= CACHE_MAX {
                c.clear();
            }
        }
        c.insert(token.to_string(), v);
    }

    fn revocations(&self) -> std::sync::RwLockReadGuard<'_, Vec<Revocation>> {
        self.revocations.read().unwrap_or_else(|p| p.into_inner())
    }

    fn add_revocation(&self, r: Revocation) {
        let now = crate::timeutil::now_us();
        let mut list = self.revocations.write().unwrap_or_else(|p| p.into_inner());
        list.retain(|e| e.prune_after_us > now && e.id != r.id);
        list.push(r);
    }

    /// A change read from the log (see `crate::follow`): a change to
    /// anything a token's validity depends on drops cached validations,
    /// and a revocation event joins the list, whoever wrote it.
    pub fn on_change(&self, c: &stratus_store::Change) {
        if !IDENTITY_KINDS.contains(&c.kind.as_str()) {
            return;
        }
        if c.kind == <Revocation as stratus_store::Record>::KIND
            && let Some(ev) = c
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Revocation>(b).ok())
        {
            self.add_revocation(ev);
        }
        self.invalidate();
    }
}

fn dir_mtime(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

impl AppState {
    /// Runs one identity write transaction and invalidates cached
    /// validations, so the change is visible to the very next request.
    pub fn identity_write<R>(
        &self,
        f: impl FnOnce(&Tx) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let out = self.store.write(f);
        self.identity.invalidate();
        out
    }

    /// Records a revocation event durably and applies it at once.
    pub fn revoke(&self, mut ev: Revocation) -> Result<(), ApiError> {
        ev.id = uuid::Uuid::new_v4().simple().to_string();
        ev.prune_after_us = ev.issued_before_us + self.identity.token_ttl_us * 2;
        let now = crate::timeutil::now_us();
        self.identity_write(|tx| {
            for old in tx.list::<Revocation>(&Query::all())? {
                if old.prune_after_us < now {
                    tx.delete::<Revocation>(&old.id)?;
                }
            }
            tx.insert(&ev)?;
            Ok(())
        })?;
        self.identity.add_revocation(ev);
        self.identity.invalidate();
        Ok(())
    }

    /// `http://host/identity/v3/<path>`.
    pub fn identity_url(&self, path: &str) -> String {
        format!(
            "{}/identity/v3/{}",
            self.config.public_url,
            path.trim_start_matches('/')
        )
    }
}

/// A new random id, as Keystone makes them (32 hex digits).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Identity's routes, at their full paths (`/identity`, `/identity/v3/...`).
pub fn router() -> Router<AppState> {
    let v3 = Router::new()
        .merge(auth::routes())
        .merge(domains::routes())
        .merge(projects::routes())
        .merge(users::routes())
        .merge(groups::routes())
        .merge(roles::routes())
        .merge(assignments::routes())
        .merge(catalog::routes())
        .merge(credentials::routes())
        .merge(app_creds::routes())
        .merge(access_rules::routes())
        .merge(trusts::routes())
        .merge(limits::routes())
        .merge(policies::routes())
        .merge(oauth1::routes())
        .merge(ep_filter::routes())
        .merge(domain_config::routes())
        .fallback(crate::error::not_found_fallback);
    Router::new()
        .route("/identity", get(versions))
        .route("/identity/", get(versions))
        .route("/identity/v3", get(version))
        .route("/identity/v3/", get(version))
        .nest("/identity/v3", v3)
}

fn version_doc(state: &AppState) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": state.identity_url("")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]
    })
}

async fn versions(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(json!({"versions": {"values": [version_doc(&state)]}})),
    )
        .into_response()
}

async fn version(axum::extract::State(state): axum::extract::State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({"version": version_doc(&state)}))
}

/// A list body: `{"<key>": [...], "links": {...}}`.
pub fn list_body(state: &AppState, key: &str, path: &str, items: Vec<Value>) -> axum::Json<Value> {
    axum::Json(json!({
        key: items,
        "links": {"self": state.identity_url(path), "previous": null, "next": null}
    }))
}

/// Query parameters that are not attribute filters.
const RESERVED: &[&str] = &[
    "include_names",
    "effective",
    "include_subtree",
    "subtree_as_list",
    "parents_as_list",
    "subtree_as_ids",
    "parents_as_ids",
    "nocatalog",
    "allow_expired",
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
];

/// Keystone's list filters on rendered objects: `attr=value` for exact
/// matches (booleans case-insensitively), and `attr__contains`,
/// `__icontains`, `__startswith`, `__istartswith`, `__endswith`,
/// `__iendswith` for the inexact ones; plus `tags` / `tags-any` /
/// `not-tags` / `not-tags-any`. Unknown attributes match nothing, as in
/// Keystone's SQL driver.
pub fn filter(items: Vec<Value>, q: &HashMap<String, String>) -> Vec<Value> {
    items.into_iter().filter(|item| matches(item, q)).collect()
}

fn matches(item: &Value, q: &HashMap<String, String>) -> bool {
    for (k, want) in q {
        if RESERVED.contains(&k.as_str()) || k.contains('.') {
            if tag_filter(item, k, want) == Some(false) {
                return false;
            }
            continue;
        }
        let (attr, op) = match k.split_once("__") {
            Some((a, op)) => (a, op),
            None => (k.as_str(), "eq"),
        };
        let Some(have) = item.get(attr) else {
            return false;
        };
        let have_s = match have {
            Value::String(s) => s.clone(),
            Value::Null => "None".into(),
            other => other.to_string(),
        };
        let ok = match op {
            "eq" => match have {
                Value::Bool(b) => parse_bool(want) == Some(*b),
                _ => have_s == *want,
            },
            "contains" => have_s.contains(want.as_str()),
            "icontains" => have_s.to_lowercase().contains(&want.to_lowercase()),
            "startswith" => have_s.starts_with(want.as_str()),
            "istartswith" => have_s.to_lowercase().starts_with(&want.to_lowercase()),
            "endswith" => have_s.ends_with(want.as_str()),
            "iendswith" => have_s.to_lowercase().ends_with(&want.to_lowercase()),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn tag_filter(item: &Value, k: &str, want: &str) -> Option<bool> {
    let tags: Vec<&str> = item
        .get("tags")?
        .as_array()?
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let wanted: Vec<&str> = want.split(',').collect();
    Some(match k {
        "tags" => wanted.iter().all(|w| tags.contains(w)),
        "tags-any" => wanted.iter().any(|w| tags.contains(w)),
        "not-tags" => !wanted.iter().all(|w| tags.contains(w)),
        "not-tags-any" => !wanted.iter().any(|w| tags.contains(w)),
        _ => return None,
    })
}

/// Keystone's boolean query values: `true`, `True`, `1`, `yes`, `on` and the
/// empty string (a bare flag) are true.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// A query flag: present with a true value (or bare).
pub fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).and_then(|v| parse_bool(v)).unwrap_or(false)
}

/// Validates a name: a string of at most 255 characters with something
/// other than whitespace in it (Keystone's `name` schema), and no control
/// characters. Keystone's schema itself lets controls through, but its SQL
/// backends cannot all keep them (PostgreSQL refuses NUL) and no client
/// means them, so they are refused here with the schema's 400; every other
/// character, of any script, is accepted.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field '{field}': it must be a non-empty string."
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field '{field}': it must not contain control characters."
        )));
    }
    if name.chars().count() > 255 {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field '{field}': it is longer than 255 characters."
        )));
    }
    Ok(())
}

/// Maps a store conflict to Keystone's 409 wording for `kind`.
pub fn conflict_as(kind: &str, name: &str) -> impl Fn(StoreError) -> ApiError {
    let msg = format!(
        "Conflict occurred attempting to store {kind} - Duplicate entry found with name {name}."
    );
    move |e| match e {
        StoreError::Conflict(_) => ApiError::conflict(msg.clone()),
        other => other.into(),
    }
}

/// A request body's resource object (`{"project": {...}}`), with typed
/// accessors that answer 400 naming the field on a wrong type.
pub struct Obj {
    key: &'static str,
    map: serde_json::Map<String, Value>,
}

impl Obj {
    pub fn from_body(body: Value, key: &'static str) -> Result<Obj, ApiError> {
        match body {
            Value::Object(mut m) => match m.remove(key) {
                Some(Value::Object(map)) => Ok(Obj { key, map }),
                Some(_) => Err(ApiError::bad_request(format!(
                    "Invalid input for field '{key}': it must be an object."
                ))),
                None => Err(ApiError::bad_request(format!(
                    "Invalid input for field '{key}': '{key}' is a required property."
                ))),
            },
            _ => Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            )),
        }
    }

    /// An object already taken out of its envelope (one item of a list).
    pub fn new(key: &'static str, map: serde_json::Map<String, Value>) -> Obj {
        Obj { key, map }
    }

    /// An integer field; `null` reads as absent.
    pub fn int(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(_) => Err(self.bad(field, "it must be an integer")),
        }
    }

    fn bad(&self, field: &str, what: &str) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid input for field '{}.{field}': {what}.",
            self.key
        ))
    }

    pub fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// Refuses an object without any field (Keystone's `minProperties: 1`
    /// on updates).
    pub fn require_some(&self) -> Result<(), ApiError> {
        if self.map.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field '{}': it must have at least one property.",
                self.key
            )));
        }
        Ok(())
    }

    /// A string field; `null` reads as absent.
    pub fn str(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(field, "it must be a string")),
        }
    }

    /// An id field (`domain_id`, `parent_id`): Keystone's `id_string`, 1-64
    /// letters, digits and dashes. `null` reads as absent where the schema
    /// makes the field nullable and is refused where it does not.
    pub fn id_str(&self, field: &str, nullable: bool) -> Result<Option<String>, ApiError> {
        if !nullable && self.map.get(field).is_some_and(Value::is_null) {
            return Err(self.bad(field, "it must be a string"));
        }
        let id = self.str(field)?;
        if let Some(id) = &id
            && !((1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(self.bad(field, "it must be 1-64 letters, digits or dashes"));
        }
        Ok(id)
    }

    pub fn req_str(&self, field: &str) -> Result<String, ApiError> {
        self.str(field)?.ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field '{}': '{field}' is a required property.",
                self.key
            ))
        })
    }

    /// A name field: present means non-empty and at most 255 characters.
    pub fn name(&self, field: &str) -> Result<Option<String>, ApiError> {
        self.name_max(field, 255)
    }

    /// A name field of at most `max` characters (Keystone allows 64 for
    /// domains, projects and groups). Absent is `None`; `null` is refused,
    /// as Keystone's schema types a name as a string.
    pub fn name_max(&self, field: &str, max: usize) -> Result<Option<String>, ApiError> {
        if self.map.get(field).is_some_and(Value::is_null) {
            return Err(self.bad(field, "it must be a string"));
        }
        let n = self.str(field)?;
        if let Some(n) = &n {
            check_name(&format!("{}.{field}", self.key), n)?;
            if n.chars().count() > max {
                return Err(self.bad(field, &format!("it is longer than {max} characters")));
            }
        }
        Ok(n)
    }

    /// A boolean field. Keystone's schemas never let a boolean be `null`
    /// (it is not read as "unset"), so `null` is a 400 like any other type.
    pub fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.map.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(field, "it must be a boolean")),
        }
    }

    pub fn tags(&self) -> Result<Option<Vec<String>>, ApiError> {
        match self.map.get("tags") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => {
                let mut out = Vec::new();
                for t in a {
                    match t.as_str() {
                        Some(s) if !s.is_empty() && s.len() <= 255 && !s.contains(['/', ',']) => {
                            if !out.iter().any(|x| x == s) {
                                out.push(s.to_string())
                            }
                        }
                        _ => return Err(self.bad("tags", "each tag must be a non-empty string of at most 255 characters without '/' or ','")),
                    }
                }
                if out.len() > 80 {
                    return Err(self.bad("tags", "at most 80 tags are allowed"));
                }
                Ok(Some(out))
            }
            Some(_) => Err(self.bad("tags", "it must be a list of strings")),
        }
    }

    pub fn object(&self, field: &str) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o.clone())),
            Some(_) => Err(self.bad(field, "it must be an object")),
        }
    }

    pub fn value(&self, field: &str) -> Option<&Value> {
        self.map.get(field)
    }

    /// Fields other than `known`: Keystone keeps them as extra attributes.
    pub fn extra(&self, known: &[&str]) -> serde_json::Map<String, Value> {
        self.map
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()) && *k != "id" && *k != "links")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies the extra attributes of an update to `into`, as Keystone
    /// does: a null removes the attribute, anything else sets it.
    pub fn merge_extra(&self, known: &[&str], into: &mut serde_json::Map<String, Value>) {
        for (k, v) in self.extra(known) {
            if v.is_null() {
                into.remove(&k);
            } else {
                into.insert(k, v);
            }
        }
    }

    /// Refuses fields that may not be changed.
    pub fn forbid(&self, fields: &[&str]) -> Result<(), ApiError> {
        for f in fields {
            if self.map.contains_key(*f) {
                return Err(ApiError::bad_request(format!(
                    "Update of `{f}` is not allowed."
                )));
            }
        }
        Ok(())
    }
}

/// `{"self": url}` for an object.
pub fn self_link(state: &AppState, path: &str) -> Value {
    json!({"self": state.identity_url(path)})
}
