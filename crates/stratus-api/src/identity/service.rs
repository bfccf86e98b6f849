//! Identity logic: effective roles, authentication, token validation and
//! the token and catalog documents. Handlers call in here; nothing here
//! knows about HTTP beyond returning [`ApiError`].

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use stratus_store::{Query, Store};

use super::model::*;
use super::token::{self, Scope, TokenData};
use crate::timeutil::{iso_us, now_us};
use crate::{ApiError, AppState};

/// Where a role applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Project(String),
    Domain(String),
    System,
}

/// Groups the user belongs to.
pub fn user_group_ids(store: &Store, user_id: &str) -> Result<Vec<String>, ApiError> {
    Ok(store
        .list::<Membership>(&Query::owner(user_id))?
        .into_iter()
        .map(|m| m.group_id)
        .collect())
}

/// The parent chain of a project, nearest first (not including itself).
pub fn project_ancestors(store: &Store, project: &Project) -> Result<Vec<Project>, ApiError> {
    let mut out = Vec::new();
    let mut next = project.parent_id.clone();
    while let Some(pid) = next {
        if out.len() > 64 {
            break; // a cycle cannot be created through the API; be safe anyway
        }
        match store.get::<Project>(&pid)? {
            Some(p) => {
                next = p.parent_id.clone();
                out.push(p);
            }
            None => break,
        }
    }
    Ok(out)
}

/// Assignments that apply to `target` for any of `actors`, before implied
/// roles: direct ones, plus inherited ones from the project's domain and
/// ancestors (OS-INHERIT).
pub fn applicable_assignments(
    store: &Store,
    actors: &HashSet<String>,
    target: &Target,
) -> Result<Vec<Assignment>, ApiError> {
    let mut out = Vec::new();
    let mut take = |target_id: &str, kind: TargetKind, inherited: bool| -> Result<(), ApiError> {
        for a in store.list::<Assignment>(&Query::owner(target_id))? {
            if a.target == kind && a.inherited == inherited && actors.contains(&a.actor_id) {
                out.push(a);
            }
        }
        Ok(())
    };
    match target {
        Target::System => take(SYSTEM_ALL, TargetKind::System, false)?,
        Target::Domain(d) => take(d, TargetKind::Domain, false)?,
        Target::Project(p) => {
            take(p, TargetKind::Project, false)?;
            if let Some(project) = store.get::<Project>(p)? {
                for anc in project_ancestors(store, &project)? {
                    take(&anc.id, TargetKind::Project, true)?;
                }
                take(&project.domain_id, TargetKind::Domain, true)?;
            }
        }
    }
    Ok(out)
}

/// Adds every role implied, transitively, by the given ones.
pub fn expand_implied(store: &Store, ids: HashSet<String>) -> Result<HashSet<String>, ApiError> {
    let rules = store.list::<Inference>(&Query::all())?;
    let mut out = ids;
    let mut frontier: Vec<String> = out.iter().cloned().collect();
    while let Some(r) = frontier.pop() {
        for rule in rules.iter().filter(|i| i.prior_role_id == r) {
            if out.insert(rule.implied_role_id.clone()) {
                frontier.push(rule.implied_role_id.clone());
            }
        }
    }
    Ok(out)
}

/// The user's effective role ids on `target` (direct, group, inherited, implied).
pub fn effective_role_ids(
    store: &Store,
    user_id: &str,
    target: &Target,
) -> Result<HashSet<String>, ApiError> {
    let mut actors: HashSet<String> = user_group_ids(store, user_id)?.into_iter().collect();
    actors.insert(user_id.to_string());
    let direct = applicable_assignments(store, &actors, target)?
        .into_iter()
        .map(|a| a.role_id)
        .collect();
    let mut ids = expand_implied(store, direct)?;
    drop_domain_specific(store, &mut ids)?;
    Ok(ids)
}

/// Domain-specific roles only carry meaning through the global roles they
/// imply; like Keystone, they never appear in tokens or effective listings.
pub fn drop_domain_specific(store: &Store, ids: &mut HashSet<String>) -> Result<(), ApiError> {
    let mut keep = HashSet::new();
    for id in ids.iter() {
        if store
            .get::<Role>(id)?
            .is_some_and(|r| r.domain_id.is_none())
        {
            keep.insert(id.clone());
        }
    }
    *ids = keep;
    Ok(())
}

/// Loads roles by id, sorted by name, skipping ones that vanished.
pub fn load_roles(store: &Store, ids: &HashSet<String>) -> Result<Vec<Role>, ApiError> {
    let mut roles = Vec::new();
    for id in ids {
        if let Some(r) = store.get::<Role>(id)? {
            roles.push(r);
        }
    }
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(roles)
}

// ---- request bodies ------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct AuthBody {
    pub auth: AuthSpec,
}

#[derive(Debug, Deserialize)]
pub struct AuthSpec {
    pub identity: IdentitySpec,
    #[serde(default)]
    pub scope: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct IdentitySpec {
    pub methods: Vec<String>,
    pub password: Option<PasswordSpec>,
    pub token: Option<TokenSpec>,
    pub application_credential: Option<AppCredSpec>,
}

#[derive(Debug, Deserialize)]
pub struct PasswordSpec {
    pub user: UserRef,
}

#[derive(Debug, Deserialize)]
pub struct UserRef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain: Option<NameOrId>,
    pub password: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TokenSpec {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct AppCredSpec {
    pub id: Option<String>,
    pub name: Option<String>,
    pub secret: String,
    pub user: Option<UserRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NameOrId {
    pub id: Option<String>,
    pub name: Option<String>,
}

// ---- lookups by reference -------------------------------------------------

pub fn find_domain(store: &Store, r: &NameOrId) -> Result<Option<Domain>, ApiError> {
    if let Some(id) = &r.id {
        return Ok(store.get::<Domain>(id)?);
    }
    if let Some(name) = &r.name {
        return Ok(store.get_unique::<Domain>(&name.to_lowercase())?);
    }
    Err(ApiError::bad_request("A domain needs an 'id' or a 'name'."))
}

fn find_user(store: &Store, r: &UserRef) -> Result<Option<User>, ApiError> {
    if let Some(id) = &r.id {
        return Ok(store.get::<User>(id)?);
    }
    let Some(name) = &r.name else {
        return Err(ApiError::bad_request(
            "A user needs an 'id', or a 'name' and a 'domain'.",
        ));
    };
    let Some(dref) = &r.domain else {
        return Err(ApiError::bad_request(
            "Invalid input for field 'user': a user given by name needs its 'domain'.",
        ));
    };
    let Some(domain) = find_domain(store, dref)? else {
        return Ok(None);
    };
    Ok(store.get_unique::<User>(&format!("{}/{}", domain.id, name))?)
}

fn parse_scope(store: &Store, scope: &Value) -> Result<Option<Scope>, ApiError> {
    if scope.as_str() == Some("unscoped") {
        return Ok(Some(Scope::Unscoped));
    }
    let bad = || ApiError::bad_request("Invalid input for field 'scope'.");
    let obj = scope.as_object().ok_or_else(bad)?;
    if let Some(p) = obj.get("project") {
        if let Some(id) = p.get("id").and_then(Value::as_str) {
            return Ok(Some(Scope::Project(id.to_string())));
        }
        let name = p.get("name").and_then(Value::as_str).ok_or_else(bad)?;
        let dref: NameOrId = p
            .get("domain")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|_| bad())?
            .ok_or_else(|| ApiError::bad_request("A project given by name needs its 'domain'."))?;
        let domain = find_domain(store, &dref)?.ok_or_else(ApiError::unauthorized)?;
        let project = store
            .get_unique::<Project>(&format!("{}/{name}", domain.id))?
            .ok_or_else(ApiError::unauthorized)?;
        return Ok(Some(Scope::Project(project.id)));
    }
    if let Some(d) = obj.get("domain") {
        let dref: NameOrId = serde_json::from_value(d.clone()).map_err(|_| bad())?;
        let domain = find_domain(store, &dref)?.ok_or_else(ApiError::unauthorized)?;
        return Ok(Some(Scope::Domain(domain.id)));
    }
    if let Some(s) = obj.get("system") {
        if s.get("all").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(Scope::System));
        }
        return Err(bad());
    }
    Err(bad())
}

// ---- authentication --------------------------------------------------------

/// Authenticates a `POST /v3/auth/tokens` body and returns the new token's
/// data. Every failure to prove identity is the same 401.
pub async fn authenticate(state: &AppState, body: &AuthBody) -> Result<TokenData, ApiError> {
    let store = &state.store;
    let ident = &body.auth.identity;
    if ident.methods.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid input for field 'identity': 'methods' is empty.",
        ));
    }
    let mut user_id: Option<String> = None;
    let mut methods = 0u8;
    let mut expires_us = now_us() + state.identity.token_ttl_us;
    let mut parent_audit = None;
    let mut app_cred: Option<AppCredential> = None;
    let mut agree = |id: String| -> Result<(), ApiError> {
        match &user_id {
            Some(prev) if *prev != id => Err(ApiError::unauthorized()),
            _ => {
                user_id = Some(id);
                Ok(())
            }
        }
    };
    for m in &ident.methods {
        match m.as_str() {
            "password" => {
                let spec = ident.password.as_ref().ok_or_else(|| {
                    ApiError::bad_request(
                        "Invalid input for field 'identity': 'password' is required.",
                    )
                })?;
                let password = spec.user.password.clone().ok_or_else(|| {
                    ApiError::bad_request(
                        "Invalid input for field 'password': 'password' is a required property.",
                    )
                })?;
                let user = find_user(store, &spec.user)?;
                let hash = user.as_ref().and_then(|u| u.password_hash.clone());
                let who = user.as_ref().map_or("", |u| u.id.as_str());
                let ok = state
                    .identity
                    .hashing
                    .verify_credential(who, password, hash)
                    .await?;
                let user = match user {
                    Some(u) if ok => u,
                    _ => return Err(ApiError::unauthorized()),
                };
                methods |= token::METHOD_PASSWORD;
                agree(user.id)?;
            }
            "token" => {
                let spec = ident.token.as_ref().ok_or_else(|| {
                    ApiError::bad_request(
                        "Invalid input for field 'identity': 'token' is required.",
                    )
                })?;
                let prev = validate(state, &spec.id, false).map_err(|e| match e {
                    Invalid::Store(e) => e,
                    _ => ApiError::not_found("token", &spec.id),
                })?;
                if prev.data.app_cred_id.is_some() {
                    return Err(ApiError::forbidden(
                        "rescope an application credential token",
                    ));
                }
                if prev.data.trust_id.is_some() {
                    return Err(ApiError::forbidden(
                        "Using trust-scoped token to create another token. Create a new trust-scoped token instead",
                    ));
                }
                methods |= token::METHOD_TOKEN | prev.data.methods;
                expires_us = expires_us.min(prev.data.expires_us);
                parent_audit = prev.data.audit_ids.last().copied();
                agree(prev.data.user_id.clone())?;
            }
            "application_credential" => {
                let spec = ident.application_credential.as_ref().ok_or_else(|| {
                    ApiError::bad_request(
                        "Invalid input for field 'identity': 'application_credential' is required.",
                    )
                })?;
                let ac = match (&spec.id, &spec.name) {
                    (Some(id), _) => store.get::<AppCredential>(id)?,
                    (None, Some(name)) => {
                        let uref = spec.user.as_ref().ok_or_else(|| {
                            ApiError::bad_request(
                                "An application credential given by name needs its 'user'.",
                            )
                        })?;
                        match find_user(store, uref)? {
                            Some(u) => {
                                store.get_unique::<AppCredential>(&format!("{}/{name}", u.id))?
                            }
                            None => None,
                        }
                    }
                    _ => {
                        return Err(ApiError::bad_request(
                            "An application credential needs an 'id' or a 'name'.",
                        ));
                    }
                };
                let hash = ac.as_ref().map(|a| a.secret_hash.clone());
                let who = ac.as_ref().map_or("", |a| a.id.as_str());
                let ok = state
                    .identity
                    .hashing
                    .verify_credential(who, spec.secret.clone(), hash)
                    .await?;
                let ac = match ac {
                    Some(a) if ok => a,
                    _ => return Err(ApiError::unauthorized()),
                };
                if ac.expires_at_us.is_some_and(|e| e <= now_us()) {
                    return Err(ApiError::unauthorized_msg(
                        "The application credential has expired.",
                    ));
                }
                if let Some(e) = ac.expires_at_us {
                    expires_us = expires_us.min(e);
                }
                methods |= token::METHOD_APP_CRED;
                agree(ac.user_id.clone())?;
                app_cred = Some(ac);
            }
            other => {
                return Err(ApiError::unauthorized_msg(format!(
                    "Attempted to authenticate with an unsupported method: {other}."
                )));
            }
        }
    }
    let user_id = user_id.ok_or_else(ApiError::unauthorized)?;
    let user = store
        .get::<User>(&user_id)?
        .ok_or_else(ApiError::unauthorized)?;
    let user_domain = store.get::<Domain>(&user.domain_id)?;
    if !user.enabled || !user_domain.is_some_and(|d| d.enabled) {
        return Err(ApiError::unauthorized_msg(format!(
            "The account is disabled for user: {}.",
            user.id
        )));
    }
    let trust = match body
        .auth
        .scope
        .as_ref()
        .and_then(|s| s.get("OS-TRUST:trust"))
    {
        Some(t) => Some(trust_for_auth(
            state,
            &body.auth.scope,
            t,
            &user,
            app_cred.is_some(),
        )?),
        None => None,
    };
    if let Some(e) = trust.as_ref().and_then(|t| t.expires_at_us) {
        expires_us = expires_us.min(e);
    }
    let requested = match &trust {
        Some(_) => None,
        None => body
            .auth
            .scope
            .as_ref()
            .map(|s| parse_scope(store, s))
            .transpose()?
            .flatten(),
    };
    let scope = if let Some(t) = &trust {
        match &t.project_id {
            Some(p) => Scope::Project(p.clone()),
            None => Scope::Unscoped,
        }
    } else if let Some(ac) = &app_cred {
        if requested
            .as_ref()
            .is_some_and(|s| *s != Scope::Project(ac.project_id.clone()))
        {
            return Err(ApiError::unauthorized_msg(
                "Application credentials cannot request a scope.",
            ));
        }
        Scope::Project(ac.project_id.clone())
    } else if let Some(s) = requested {
        s
    } else {
        match &user.default_project_id {
            Some(p)
                if store.get::<Project>(p)?.is_some_and(|x| x.enabled)
                    && store
                        .get::<Project>(p)?
                        .and_then(|x| store.get::<Domain>(&x.domain_id).ok().flatten())
                        .is_some_and(|d| d.enabled)
                    && !effective_role_ids(store, &user.id, &Target::Project(p.clone()))?
                        .is_empty() =>
            {
                Scope::Project(p.clone())
            }
            _ => Scope::Unscoped,
        }
    };
    let mut audit = [0u8; 16];
    super::fernet::fill_random(&mut audit);
    let mut audit_ids = vec![audit];
    audit_ids.extend(parent_audit);
    let data = TokenData {
        methods,
        user_id,
        scope,
        issued_us: now_us(),
        expires_us,
        audit_ids,
        app_cred_id: app_cred.map(|a| a.id),
        trust_id: trust.as_ref().map(|t| t.id.clone()),
    };
    // Check the scope now so a token that could never validate is never issued.
    build(state, data.clone()).map_err(|e| match e {
        Invalid::Store(e) => e,
        Invalid::Scope(msg) if trust.is_some() => ApiError::new(StatusCode::FORBIDDEN, msg),
        Invalid::Scope(msg) => ApiError::unauthorized_msg(msg),
        Invalid::Token => ApiError::unauthorized(),
    })?;
    if let Some(t) = &trust {
        consume_trust_use(state, &t.id)?;
    }
    Ok(data)
}

/// A trust that can be used now: not expired, uses left. `None` also when
/// it does not exist (Keystone answers 404 alike).
pub fn live_trust(store: &Store, id: &str) -> Result<Option<Trust>, ApiError> {
    Ok(store.get::<Trust>(id)?.filter(|t| {
        t.expires_at_us.is_none_or(|e| e > now_us()) && t.remaining_uses.is_none_or(|n| n > 0)
    }))
}

/// Checks an `OS-TRUST:trust` scope for `user` (who must be the trustee)
/// and returns the trust.
fn trust_for_auth(
    state: &AppState,
    scope: &Option<Value>,
    spec: &Value,
    user: &User,
    app_cred: bool,
) -> Result<Trust, ApiError> {
    if app_cred {
        return Err(ApiError::unauthorized_msg(
            "Application credentials cannot request a scope.",
        ));
    }
    if let Some(obj) = scope.as_ref().and_then(Value::as_object) {
        for other in ["project", "domain", "system"] {
            if obj.contains_key(other) {
                return Err(ApiError::bad_request(format!(
                    "Scoping to both {other} and trust is not allowed."
                )));
            }
        }
    }
    let id = spec.get("id").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'OS-TRUST:trust': 'id' is required.")
    })?;
    let trust = live_trust(&state.store, id)?.ok_or_else(|| ApiError::not_found("trust", id))?;
    if trust.trustee_user_id != user.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "User is not a trustee.",
        ));
    }
    let trustor = state.store.get::<User>(&trust.trustor_user_id)?;
    let trustor_ok = match &trustor {
        Some(u) => {
            u.enabled
                && state
                    .store
                    .get::<Domain>(&u.domain_id)?
                    .is_some_and(|d| d.enabled)
        }
        None => false,
    };
    if !trustor_ok {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Trustor is disabled."));
    }
    Ok(trust)
}

/// Takes one use of a trust with limited uses, after its token was built.
fn consume_trust_use(state: &AppState, id: &str) -> Result<(), ApiError> {
    state.identity_write(|tx| {
        let Some(mut t) = tx.get::<Trust>(id)? else {
            return Err(ApiError::not_found("trust", id));
        };
        match t.remaining_uses {
            None => Ok(()),
            Some(n) if n <= 0 => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("The trust {id} has reached its use limit."),
            )),
            Some(n) => {
                t.remaining_uses = Some(n - 1);
                tx.update(&t)?;
                Ok(())
            }
        }
    })
}

/// Encrypts token data into the token string.
pub fn issue(state: &AppState, data: &TokenData) -> String {
    state
        .identity
        .keys()
        .encrypt(&data.encode(), (data.issued_us / 1_000_000) as u64)
}

// ---- validation -------------------------------------------------------------

/// A token that validated, with everything needed to render it and to make
/// policy decisions about its bearer.
pub struct Validated {
    pub data: TokenData,
    pub user: User,
    pub user_domain: Domain,
    pub project: Option<Project>,
    pub project_domain: Option<Domain>,
    pub domain: Option<Domain>,
    pub roles: Vec<Role>,
    pub app_cred: Option<AppCredential>,
    /// The trust of a trust-scoped token. `user` is then the trustor when
    /// the trust impersonates, else the trustee.
    pub trust: Option<Trust>,
    epoch: u64,
    body_catalog: OnceLock<String>,
    body_plain: OnceLock<String>,
}

#[derive(Debug)]
pub enum Invalid {
    /// Not a token, expired, revoked, or its user is gone or disabled.
    Token,
    /// The scope no longer holds (no roles, disabled or deleted target).
    Scope(String),
    Store(ApiError),
}

impl From<ApiError> for Invalid {
    fn from(e: ApiError) -> Self {
        Invalid::Store(e)
    }
}

impl From<stratus_store::StoreError> for Invalid {
    fn from(e: stratus_store::StoreError) -> Self {
        Invalid::Store(e.into())
    }
}

/// Validates a token string: decrypts it, checks expiry and revocation,
/// and resolves its user, scope and current roles. Cached until the next
/// identity write.
pub fn validate(
    state: &AppState,
    tok: &str,
    allow_expired: bool,
) -> Result<Arc<Validated>, Invalid> {
    validate_opts(state, tok, allow_expired, true)
}

/// [`validate`], choosing whether a fresh result is cached (a token just
/// issued is not: most are used a few times and would only crowd the cache).
pub fn validate_opts(
    state: &AppState,
    tok: &str,
    allow_expired: bool,
    cache: bool,
) -> Result<Arc<Validated>, Invalid> {
    let id = &state.identity;
    let now = now_us();
    if !allow_expired
        && let Some(v) = id.cached(tok)
        && v.epoch == id.epoch()
        && v.data.expires_us > now
    {
        return Ok(v);
    }
    let epoch = id.epoch();
    let payload = match id.keys().decrypt(tok) {
        Some(p) => p,
        None => {
            id.refresh_keys();
            id.keys().decrypt(tok).ok_or(Invalid::Token)?
        }
    };
    let data = TokenData::decode(&payload.0).ok_or(Invalid::Token)?;
    const ALLOW_EXPIRED_WINDOW_US: i64 = 48 * 3600 * 1_000_000;
    if data.expires_us <= now
        && (!allow_expired || data.expires_us + ALLOW_EXPIRED_WINDOW_US <= now)
    {
        return Err(Invalid::Token);
    }
    let mut v = build(state, data)?;
    let trustor = v.trust.as_ref().map(|t| t.trustor_user_id.as_str());
    if is_revoked(state, &v.data, trustor) {
        return Err(Invalid::Token);
    }
    v.epoch = epoch;
    let v = Arc::new(v);
    if !allow_expired && cache {
        id.remember(tok, v.clone());
    }
    Ok(v)
}

/// Whether a revocation event matches the token. As in Keystone, an event
/// for a user also matches trust tokens where that user is the trustor.
fn is_revoked(state: &AppState, d: &TokenData, trustor: Option<&str>) -> bool {
    let audits = d.audit_strings();
    let project = match &d.scope {
        Scope::Project(p) => Some(p.as_str()),
        _ => None,
    };
    let domain = match &d.scope {
        Scope::Domain(p) => Some(p.as_str()),
        _ => None,
    };
    state.identity.revocations().iter().any(|ev| {
        d.issued_us <= ev.issued_before_us
            && ev
                .user_id
                .as_deref()
                .is_none_or(|u| u == d.user_id || Some(u) == trustor)
            && ev
                .trust_id
                .as_deref()
                .is_none_or(|t| d.trust_id.as_deref() == Some(t))
            && ev.project_id.as_deref().is_none_or(|p| Some(p) == project)
            && ev.domain_id.as_deref().is_none_or(|p| Some(p) == domain)
            && ev
                .audit_id
                .as_deref()
                .is_none_or(|a| audits.first().is_some_and(|x| x == a))
            && ev
                .app_cred_id
                .as_deref()
                .is_none_or(|a| d.app_cred_id.as_deref() == Some(a))
    })
}

/// A user who exists and is enabled in an enabled domain, with that domain.
fn active_user(store: &Store, id: &str) -> Result<(User, Domain), Invalid> {
    let user = store.get::<User>(id)?.ok_or(Invalid::Token)?;
    let domain = store
        .get::<Domain>(&user.domain_id)?
        .ok_or(Invalid::Token)?;
    if !user.enabled || !domain.enabled {
        return Err(Invalid::Token);
    }
    Ok((user, domain))
}

fn build(state: &AppState, data: TokenData) -> Result<Validated, Invalid> {
    let store = &state.store;
    let (mut user, mut user_domain) = active_user(store, &data.user_id)?;
    // A trust token's user is the trustee; both ends must still be active,
    // and the trust must not be deleted or expired. Tokens already issued
    // stay valid when the last use is taken.
    let mut trustor = None;
    let trust = match &data.trust_id {
        None => None,
        Some(tid) => {
            let t = store.get::<Trust>(tid)?.ok_or(Invalid::Token)?;
            if t.expires_at_us.is_some_and(|e| e <= now_us())
                || t.trustee_user_id != user.id
                || data.scope != t.project_id.clone().map_or(Scope::Unscoped, Scope::Project)
            {
                return Err(Invalid::Token);
            }
            let (tor, tor_domain) = active_user(store, &t.trustor_user_id)?;
            if t.impersonation {
                user = tor.clone();
                user_domain = tor_domain;
            }
            trustor = Some(tor);
            Some(t)
        }
    };
    let (mut project, mut project_domain, mut domain) = (None, None, None);
    let target = match &data.scope {
        Scope::Unscoped => None,
        Scope::Project(pid) => {
            let p = store
                .get::<Project>(pid)?
                .ok_or_else(|| Invalid::Scope(format!("Could not find project: {pid}.")))?;
            let d = store.get::<Domain>(&p.domain_id)?.ok_or(Invalid::Token)?;
            if !p.enabled || !d.enabled {
                return Err(Invalid::Scope(format!("Project {pid} is disabled.")));
            }
            project = Some(p);
            project_domain = Some(d);
            Some(Target::Project(pid.clone()))
        }
        Scope::Domain(did) => {
            let d = store
                .get::<Domain>(did)?
                .ok_or_else(|| Invalid::Scope(format!("Could not find domain: {did}.")))?;
            if !d.enabled {
                return Err(Invalid::Scope(format!("Domain {did} is disabled.")));
            }
            domain = Some(d);
            Some(Target::Domain(did.clone()))
        }
        Scope::System => Some(Target::System),
    };
    let mut app_cred = None;
    let roles = match &target {
        None => Vec::new(),
        Some(t) => {
            let mut ids = match (&trust, &trustor) {
                (Some(tr), Some(tor)) => trust_role_ids(store, tr, &tor.id, t)?,
                _ => effective_role_ids(store, &user.id, t)?,
            };
            if let Some(acid) = &data.app_cred_id {
                let ac = store.get::<AppCredential>(acid)?.ok_or(Invalid::Token)?;
                if ac.expires_at_us.is_some_and(|e| e <= now_us()) {
                    return Err(Invalid::Token);
                }
                let granted = expand_implied(store, ac.role_ids.iter().cloned().collect())?;
                if !ac.role_ids.iter().all(|r| ids.contains(r)) {
                    return Err(Invalid::Scope(
                        "The user no longer holds every role of this application credential."
                            .into(),
                    ));
                }
                ids.retain(|r| granted.contains(r));
                app_cred = Some(ac);
            }
            if ids.is_empty() {
                return Err(Invalid::Scope(format!(
                    "User {} has no access to {}.",
                    user.id,
                    match t {
                        Target::Project(p) => format!("project {p}"),
                        Target::Domain(d) => format!("domain {d}"),
                        Target::System => "the system".into(),
                    }
                )));
            }
            load_roles(store, &ids)?
        }
    };
    Ok(Validated {
        data,
        user,
        user_domain,
        project,
        project_domain,
        domain,
        roles,
        app_cred,
        trust,
        epoch: 0,
        body_catalog: OnceLock::new(),
        body_plain: OnceLock::new(),
    })
}

/// The roles a trust token carries: the trust's roles and those they
/// imply, every one of which the trustor must still hold on the project.
fn trust_role_ids(
    store: &Store,
    trust: &Trust,
    trustor_id: &str,
    target: &Target,
) -> Result<HashSet<String>, Invalid> {
    let held = effective_role_ids(store, trustor_id, target)?;
    let mut ids = expand_implied(store, trust.role_ids.iter().cloned().collect())?;
    if !ids.iter().all(|r| held.contains(r)) {
        return Err(Invalid::Scope("Trustee has no delegated roles.".into()));
    }
    drop_domain_specific(store, &mut ids)?;
    Ok(ids)
}

// ---- rendering ----------------------------------------------------------------

impl Validated {
    pub fn has_role(&self, name: &str) -> bool {
        self.roles.iter().any(|r| r.name == name)
    }

    /// The token document, serialized once per validation.
    pub fn body(&self, state: &AppState, with_catalog: bool) -> &str {
        let cell = if with_catalog {
            &self.body_catalog
        } else {
            &self.body_plain
        };
        cell.get_or_init(|| {
            let v = self.render(state, with_catalog);
            serde_json::to_string(&v).unwrap_or_default()
        })
    }

    fn render(&self, state: &AppState, with_catalog: bool) -> Value {
        let d = &self.data;
        let mut t = json!({
            "methods": d.method_names(),
            "user": {
                "id": self.user.id,
                "name": self.user.name,
                "domain": {"id": self.user_domain.id, "name": self.user_domain.name},
                "password_expires_at": null,
            },
            "audit_ids": d.audit_strings(),
            "issued_at": iso_us(d.issued_us),
            "expires_at": iso_us(d.expires_us),
        });
        let scoped = !matches!(d.scope, Scope::Unscoped);
        if let (Some(p), Some(pd)) = (&self.project, &self.project_domain) {
            t["project"] =
                json!({"id": p.id, "name": p.name, "domain": {"id": pd.id, "name": pd.name}});
            t["is_domain"] = json!(false);
        }
        if let Some(dm) = &self.domain {
            t["domain"] = json!({"id": dm.id, "name": dm.name});
        }
        if d.scope == Scope::System {
            t["system"] = json!({"all": true});
        }
        if scoped {
            t["roles"] = self
                .roles
                .iter()
                .map(|r| json!({"id": r.id, "name": r.name, "domain_id": r.domain_id}))
                .collect();
            if with_catalog {
                t["catalog"] = catalog(
                    state,
                    &self.user.id,
                    self.project.as_ref().map(|p| p.id.as_str()),
                )
                .unwrap_or_else(|_| json!([]));
            }
        }
        if let Some(ac) = &self.app_cred {
            t["application_credential"] =
                json!({"id": ac.id, "name": ac.name, "restricted": !ac.unrestricted});
            if !ac.access_rules.is_empty() {
                t["application_credential"]["access_rules"] = json!(ac.access_rules);
            }
        }
        if let Some(tr) = &self.trust {
            t["OS-TRUST:trust"] = json!({
                "id": tr.id,
                "impersonation": tr.impersonation,
                "trustor_user": {"id": tr.trustor_user_id},
                "trustee_user": {"id": tr.trustee_user_id},
            });
        }
        json!({"token": t})
    }
}

/// The service catalog, as tokens and `/v3/auth/catalog` carry it.
/// URL templates (`%(project_id)s`, `$(tenant_id)s`, `%(user_id)s`) are
/// filled in for the token's user and project; endpoints that need a
/// project are left out of tokens without one, as Keystone does.
pub fn catalog(
    state: &AppState,
    user_id: &str,
    project_id: Option<&str>,
) -> Result<Value, ApiError> {
    let store = &state.store;
    let mut by_service: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for mut e in store.list::<Endpoint>(&Query::all())? {
        if !e.enabled || e.url.is_empty() {
            continue;
        }
        match fill_url(&e.url, user_id, project_id) {
            Some(u) => e.url = u,
            None => continue,
        }
        by_service
            .entry(e.service_id.clone())
            .or_default()
            .push(json!({
                "id": e.id,
                "interface": e.interface,
                "region": e.region_id,
                "region_id": e.region_id,
                "url": e.url,
            }));
    }
    let mut out = Vec::new();
    for s in store.list::<Service>(&Query::all())? {
        if !s.enabled {
            continue;
        }
        out.push(json!({
            "id": s.id,
            "type": s.kind,
            "name": s.name.clone().unwrap_or_default(),
            "endpoints": by_service.remove(&s.id).unwrap_or_default(),
        }));
    }
    Ok(Value::Array(out))
}

fn fill_url(url: &str, user_id: &str, project_id: Option<&str>) -> Option<String> {
    let mut out = url.to_string();
    for (key, value) in [
        ("project_id", project_id),
        ("tenant_id", project_id),
        ("user_id", Some(user_id)),
    ] {
        for pat in [format!("%({key})s"), format!("$({key})s")] {
            if out.contains(&pat) {
                out = out.replace(&pat, value?);
            }
        }
    }
    Some(out)
}

/// Every assignment held by the user directly or through a group.
pub fn user_assignments(store: &Store, user_id: &str) -> Result<Vec<Assignment>, ApiError> {
    let mut out = store.list::<Assignment>(&Query::parent(user_id))?;
    for g in user_group_ids(store, user_id)? {
        out.extend(store.list::<Assignment>(&Query::parent(&g))?);
    }
    Ok(out)
}

/// Projects the user has any role on (direct, group or inherited).
pub fn user_projects(store: &Store, user_id: &str) -> Result<Vec<Project>, ApiError> {
    let assignments = user_assignments(store, user_id)?;
    let all = store.list::<Project>(&Query::all())?;
    let mut ids: HashSet<String> = HashSet::new();
    let mut inherit_from: HashSet<String> = HashSet::new();
    for a in &assignments {
        match (a.target, a.inherited) {
            (TargetKind::Project, false) => {
                ids.insert(a.target_id.clone());
            }
            (TargetKind::Project, true) | (TargetKind::Domain, true) => {
                inherit_from.insert(a.target_id.clone());
            }
            _ => {}
        }
    }
    if !inherit_from.is_empty() {
        // A project inherits when its domain or any ancestor is in the set.
        let by_id: std::collections::HashMap<&str, &Project> =
            all.iter().map(|p| (p.id.as_str(), p)).collect();
        for p in &all {
            if inherit_from.contains(&p.domain_id) {
                ids.insert(p.id.clone());
                continue;
            }
            let mut cur = p.parent_id.as_deref();
            let mut hops = 0;
            while let Some(pid) = cur {
                if inherit_from.contains(pid) {
                    ids.insert(p.id.clone());
                    break;
                }
                hops += 1;
                cur = by_id
                    .get(pid)
                    .and_then(|q| q.parent_id.as_deref())
                    .filter(|_| hops < 64);
            }
        }
    }
    Ok(all.into_iter().filter(|p| ids.contains(&p.id)).collect())
}

/// Domains the user has a (non-inherited) role on.
pub fn user_domains(store: &Store, user_id: &str) -> Result<Vec<Domain>, ApiError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for a in user_assignments(store, user_id)? {
        if a.target == TargetKind::Domain
            && !a.inherited
            && seen.insert(a.target_id.clone())
            && let Some(d) = store.get::<Domain>(&a.target_id)?
        {
            out.push(d);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
