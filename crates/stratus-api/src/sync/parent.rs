//! The parent's side of sync: the operators' sites API on the public
//! router (`/edge/v1/sites`, admin only), and what the sync listener
//! serves sites (`/sync/v1/ca`, `/sync/v1/join`, `/sync/v1/exchange`).

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query, StoreError};
use stratus_wire::sync::{
    Exchange, ExchangeReply, SiteJoinReply, SiteJoinRequest, SyncChange, check_sync_version,
};

use super::pki::{PkiError, SiteCa};
use crate::compute::model::Server;
use crate::identity::policy::Ctx;
use crate::sites::{Site, state};
use crate::timeutil::{iso_us as iso, now_us};
use crate::{ApiError, AppState};

/// Changes read from the log per exchange.
const BATCH: usize = 1000;
/// Longest an exchange is held while nothing is new.
const MAX_WAIT_S: u64 = 60;
/// How long a join token is valid.
const TOKEN_TTL_US: i64 = 24 * 3600 * 1_000_000;
/// Largest exchange body a site may send (decompressed).
const MAX_BODY: u64 = 64 << 20;

/// Sync state every controller holds: its site CA, opened on first use.
pub struct SyncState {
    dir: std::path::PathBuf,
    ca: OnceLock<Arc<SiteCa>>,
    /// Held while the CA is read or made, so two first uses (the sync
    /// listener starting, a site being created) never make two.
    ca_init: std::sync::Mutex<()>,
    /// On a site: its link to its parent (see `link`).
    pub parent: std::sync::Mutex<super::link::ParentStatus>,
}

impl SyncState {
    pub fn new(data_dir: &std::path::Path) -> Self {
        SyncState {
            dir: data_dir.join("sync"),
            ca: OnceLock::new(),
            ca_init: std::sync::Mutex::new(()),
            parent: Default::default(),
        }
    }

    /// This controller's site CA, made on first use.
    pub fn ca(&self) -> Result<Arc<SiteCa>, ApiError> {
        if let Some(ca) = self.ca.get() {
            return Ok(ca.clone());
        }
        let _one = self.ca_init.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = self.ca.get() {
            return Ok(ca.clone());
        }
        let ca = Arc::new(SiteCa::open(&self.dir.join("ca")).map_err(pki_error)?);
        Ok(self.ca.get_or_init(|| ca).clone())
    }

    /// Where a site keeps its key, certificate and parent.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

fn pki_error(e: PkiError) -> ApiError {
    ApiError::internal(format!("site PKI: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

// ---- the sites API (public router, admin only) ------------------------------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/sites", get(list_sites).post(create_site))
        .route("/edge/v1/sites/{id}", get(show_site).delete(delete_site))
        .route("/edge/v1/sites/{id}/token", post(new_token))
        .route("/edge/v1/sites/{id}/revoke", post(revoke))
        .route("/edge/v1/sites/{id}/rotate", post(ask_rotate))
        .route("/edge/v1/sites/{id}/drain", post(drain))
        .route("/edge/v1/sites/{id}/dead", post(declare_dead))
        .route("/edge/v1/parent", get(parent_status))
}

fn admin(ctx: &Ctx, action: &str) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(action))
    }
}

fn find(state: &AppState, id_or_name: &str) -> Result<Site, ApiError> {
    find_in(&state.store, id_or_name)
}

/// A site by id or name.
pub fn find_in(store: &stratus_store::Store, id_or_name: &str) -> Result<Site, ApiError> {
    if let Some(s) = store.get::<Site>(id_or_name)? {
        return Ok(s);
    }
    store
        .list::<Site>(&Query::name(id_or_name))?
        .into_iter()
        .find(|s| s.name == id_or_name)
        .ok_or_else(|| ApiError::not_found("site", id_or_name))
}

fn view(state: &AppState, s: &Site, revision: i64) -> Value {
    let link = state.sites.link(&s.id).unwrap_or_default();
    let joined = s.state != state::JOINING;
    let lag = if joined {
        Some((revision - link.acked).max(0))
    } else {
        None
    };
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "availability_zone": s.name,
        "state": state.sites.shown_state(s),
        "last_contact": (link.last_contact_us > 0).then(|| iso(link.last_contact_us)),
        "revision": link.acked,
        "revision_lag": lag,
        "queued_down": lag,
        "version": (!link.software.is_empty()).then_some(link.software.clone()),
        "link": {
            "bytes_in": link.bytes_in,
            "bytes_out": link.bytes_out,
            "rtt_ms": link.rtt_ms,
            "exchanges": link.exchanges,
        },
        "certificate_expires_at": (s.cert_expires_us > 0).then(|| iso(s.cert_expires_us)),
        "certificate_fingerprint": s.cert_sha256,
        "created_at": iso(s.created_us),
        "resources": resources(&s.nodes),
        "nodes": s.nodes,
        "nodes_reported_at": (s.nodes_us > 0).then(|| iso(s.nodes_us)),
    })
}

/// A site's nodes summed: how many are up, and what they hold and use
/// (as `os-hypervisors/statistics` sums a cloud's).
fn resources(nodes: &[stratus_wire::sync::NodeSummary]) -> Value {
    let sum = |f: fn(&stratus_wire::sync::NodeSummary) -> u64| nodes.iter().map(f).sum::<u64>();
    json!({
        "nodes": nodes.len(),
        "nodes_up": nodes.iter().filter(|n| n.state == "up").count(),
        "nodes_down": nodes.iter().filter(|n| n.state != "up").count(),
        "vcpus": sum(|n| n.vcpus),
        "vcpus_used": sum(|n| n.vcpus_used),
        "memory_mb": sum(|n| n.memory_mb),
        "memory_mb_used": sum(|n| n.memory_mb_used),
        "local_gb": sum(|n| n.local_gb),
        "local_gb_used": sum(|n| n.local_gb_used),
        "running_vms": sum(|n| n.running_vms),
    })
}

async fn list_sites(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "edge:sites:list")?;
    let sites = state.store.list::<Site>(&Query::all())?;
    let rev = state.store.last_revision()?;
    let list: Vec<Value> = sites.iter().map(|s| view(&state, s, rev)).collect();
    Ok(axum::Json(json!({ "sites": list })))
}

async fn show_site(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "edge:sites:show")?;
    let s = find(&state, &id)?;
    let rev = state.store.last_revision()?;
    Ok(axum::Json(json!({ "site": view(&state, &s, rev) })))
}

/// A new one-time join token for `site`: `SITE_ID.SECRET.CA_HASH`. Only
/// the secret's hash is kept.
fn token_for(ca: &SiteCa, site: &mut Site) -> Result<String, ApiError> {
    use sha2::Digest;
    let secret = crate::identity::bootstrap::random_secret(32);
    site.token_hash = Some(hex(&sha2::Sha256::digest(secret.as_bytes())));
    site.token_expires_us = now_us() + TOKEN_TTL_US;
    Ok(format!("{}.{}.{}", site.id, secret, ca.hash()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.trim() == name
        && !name.contains(['/', ':'])
        && name != crate::compute::zones::DEFAULT_ZONE
        && name != "internal";
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid site name {name:?}: 1 to 255 characters, no '/' or ':', no surrounding spaces, and not a reserved zone name"
        )))
    }
}

/// Registers site `name` and makes its first join token.
pub fn create(
    store: &stratus_store::Store,
    ca: &SiteCa,
    name: &str,
    description: &str,
) -> Result<(Site, String), ApiError> {
    check_name(name)?;
    let zone_taken = store
        .list::<crate::compute::model::Aggregate>(&Query::all())?
        .iter()
        .any(|a| a.availability_zone.as_deref() == Some(name));
    if zone_taken {
        return Err(ApiError::conflict(format!(
            "An availability zone named {name} exists already"
        )));
    }
    let now = now_us();
    let mut site = Site {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        description: description.to_string(),
        state: state::JOINING.into(),
        token_hash: None,
        token_expires_us: 0,
        cert_sha256: None,
        cert_expires_us: 0,
        revoked: Vec::new(),
        rotate: false,
        subtree: Vec::new(),
        nodes: Vec::new(),
        nodes_us: 0,
        created_us: now,
        updated_us: now,
    };
    let token = token_for(ca, &mut site)?;
    store.write(|tx| match tx.insert(&site) {
        Err(StoreError::Conflict(_)) => Err(ApiError::conflict(format!(
            "A site named {} exists already",
            site.name
        ))),
        r => r.map(|_| ()).map_err(ApiError::from),
    })?;
    Ok((site, token))
}

/// A new join token for site `id_or_name` (one that lost its data, or
/// whose certificate was revoked). Its current certificate stays valid
/// until the token is redeemed.
pub fn rejoin_token(
    store: &stratus_store::Store,
    ca: &SiteCa,
    id_or_name: &str,
) -> Result<String, ApiError> {
    let site = find_in(store, id_or_name)?;
    store.write(|tx| {
        let mut s = tx
            .get::<Site>(&site.id)?
            .ok_or_else(|| ApiError::not_found("site", &site.id))?;
        let token = token_for(ca, &mut s)?;
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok::<_, ApiError>(token)
    })
}

/// Revokes site `id_or_name`'s certificate: its link is refused from the
/// next exchange on, until it joins again with a new token.
pub fn revoke_site(store: &stratus_store::Store, id_or_name: &str) -> Result<Site, ApiError> {
    let site = find_in(store, id_or_name)?;
    store.write(|tx| {
        let mut s = tx
            .get::<Site>(&site.id)?
            .ok_or_else(|| ApiError::not_found("site", &site.id))?;
        if let Some(c) = s.cert_sha256.take() {
            s.revoked.push(c);
        }
        s.state = state::REVOKED.into();
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok::<_, ApiError>(s)
    })
}

async fn create_site(
    State(state): State<AppState>,
    ctx: Ctx,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    admin(&ctx, "edge:sites:create")?;
    let body: Value = crate::json::decode(&raw)?;
    let s = body
        .get("site")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("The request body needs a 'site' object"))?;
    let name = s
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("A site needs a 'name' (a string)"))?
        .to_string();
    check_name(&name)?;
    let description = match s.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(ApiError::bad_request("'description' must be a string")),
    };
    let st = state.clone();
    let (site, token) = blocking(move || {
        let ca = st.sync.ca()?;
        create(&st.store, &ca, &name, &description)
    })
    .await?;
    tracing::info!(site = %site.id, name = %site.name, "site created");
    let rev = state.store.last_revision()?;
    let mut v = view(&state, &site, rev);
    v["join_token"] = json!(token);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "site": v, "join_token": token })),
    ))
}

/// A new join token for an existing site (one that lost its data, or
/// whose certificate was revoked). Its current certificate stays valid
/// until the token is redeemed.
async fn new_token(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "edge:sites:token")?;
    let st = state.clone();
    let token = blocking(move || {
        let ca = st.sync.ca()?;
        rejoin_token(&st.store, &ca, &id)
    })
    .await?;
    Ok(axum::Json(json!({ "join_token": token })))
}

/// Revokes a site's certificate: its link is refused from the next
/// exchange on, until it joins again with a new token.
/// Asks a site to rotate its certificate at its next exchange.
async fn ask_rotate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx, "edge:sites:rotate")?;
    let st = state.clone();
    blocking(move || {
        let site = find(&st, &id)?;
        if site.state != state::ACTIVE {
            return Err(ApiError::conflict(format!(
                "Site {} has no certificate to rotate ({})",
                site.name, site.state
            )));
        }
        st.store.write(|tx| {
            let mut s = tx.fetch::<Site>(&site.id)?;
            s.rotate = true;
            s.updated_us = now_us();
            tx.update(&s)?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx, "edge:sites:revoke")?;
    let st = state.clone();
    let site = blocking(move || revoke_site(&st.store, &id)).await?;
    tracing::info!(site = %site.id, name = %site.name, "site certificate revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The servers this controller has in `site`'s zones.
fn servers_of(tx: &stratus_store::Tx, site: &Site) -> Result<Vec<Server>, ApiError> {
    let zones: HashSet<&str> = site
        .subtree
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(site.name.as_str()))
        .collect();
    Ok(tx
        .list::<Server>(&Query::all())?
        .into_iter()
        .filter(|s| s.requested_az.as_deref().is_some_and(|z| zones.contains(z)))
        .collect())
}

/// Decommissions a site: its record goes, and its certificate with it.
/// Refused while it still has servers (delete them, or declare the site
/// dead and delete them then).
async fn delete_site(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx, "edge:sites:delete")?;
    let st = state.clone();
    blocking(move || {
        let site = find(&st, &id)?;
        st.store.write(|tx| {
            let left = servers_of(tx, &site)?.len();
            if left > 0 {
                return Err(ApiError::conflict(format!(
                    "Site {} still has {left} servers: drain it (delete them) first, or declare it dead and delete them",
                    site.name
                )));
            }
            tx.delete::<Site>(&site.id)?;
            Ok(())
        })?;
        st.sites.forget_routes();
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drains a site: it keeps its link and its servers, but takes no new
/// ones, so it can be emptied and decommissioned.
async fn drain(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx, "edge:sites:drain")?;
    let st = state.clone();
    blocking(move || {
        let site = find(&st, &id)?;
        st.store.write(|tx| {
            let mut s = tx.fetch::<Site>(&site.id)?;
            if s.state != state::ACTIVE && s.state != state::DRAINING {
                return Err(ApiError::conflict(format!(
                    "Site {} is {}: only an active site can be drained",
                    s.name, s.state
                )));
            }
            s.state = state::DRAINING.into();
            s.updated_us = now_us();
            tx.update(&s)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Declares a lost site dead: its link is refused from now on and its
/// servers go to ERROR here (they can then be deleted).
async fn declare_dead(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "edge:sites:dead")?;
    let st = state.clone();
    let (name, n) = blocking(move || {
        let site = find(&st, &id)?;
        st.store.write(|tx| {
            let mut s = tx.fetch::<Site>(&site.id)?;
            if let Some(c) = s.cert_sha256.take() {
                s.revoked.push(c);
            }
            s.state = state::DEAD.into();
            s.updated_us = now_us();
            tx.update(&s)?;
            let servers = servers_of(tx, &s)?;
            for mut v in servers.iter().cloned() {
                v.vm_state = crate::compute::states::vm::ERROR.into();
                v.task_state = None;
                v.fault = Some(crate::compute::model::Fault {
                    code: 500,
                    message: format!("The site {} was declared dead", s.name),
                    details: String::new(),
                    created_us: now_us(),
                });
                v.updated_us = now_us();
                tx.update(&v)?;
            }
            Ok::<_, ApiError>((s.name.clone(), servers.len()))
        })
    })
    .await?;
    tracing::warn!(site = %name, servers = n, "site declared dead");
    Ok(axum::Json(json!({ "servers_in_error": n })))
}

/// `GET /edge/v1/parent`: on a site, its link to its parent.
async fn parent_status(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "edge:parent:show")?;
    let p = state
        .sync
        .parent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(axum::Json(json!({ "parent": p.view() })))
}

// ---- what the sync listener serves ------------------------------------------

/// The site certificate a sync connection presented: its SHA-256.
#[derive(Debug, Clone)]
pub struct Peer(pub Option<String>);

pub fn sync_routes() -> Router<AppState> {
    Router::new()
        .route("/sync/v1/ca", get(ca))
        .route("/sync/v1/join", post(join))
        .route("/sync/v1/rotate", post(rotate))
        .route("/sync/v1/up", post(up))
        .route("/sync/v1/answers", post(answers))
        .route("/sync/v1/blobs/{key}", get(blob))
        .route("/sync/v1/exchange", post(exchange))
        .fallback(crate::error::not_found_fallback)
}

async fn ca(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ca = state.sync.ca()?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.pem().to_string(),
    )
        .into_response())
}

fn refused() -> ApiError {
    ApiError::unauthorized_msg("The join token is not valid: unknown, already used or expired.")
}

async fn join(
    State(state): State<AppState>,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<SiteJoinReply>), ApiError> {
    use sha2::Digest;
    let r: SiteJoinRequest = crate::json::decode(&raw)?;
    let mut parts = r.token.trim().splitn(3, '.');
    let (Some(site_id), Some(secret), Some(ca_hash)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let ca = state.sync.ca()?;
    if ca_hash != ca.hash() {
        return Err(refused());
    }
    let public_key = decode_key(&r.public_key)?;
    let secret_hash = hex(&sha2::Sha256::digest(secret.as_bytes()));
    let site_id = site_id.to_string();
    let st = state.clone();
    let reply = blocking(move || {
        certify(&st, &ca, &site_id, &public_key, |s| {
            let valid = s.token_hash.as_deref() == Some(secret_hash.as_str())
                && s.token_expires_us > now_us();
            if !valid {
                return Err(refused());
            }
            s.token_hash = None;
            s.state = state::ACTIVE.into();
            Ok(())
        })
    })
    .await?;
    tracing::info!(site = %reply.site_id, name = %reply.name, "site joined");
    Ok((StatusCode::CREATED, axum::Json(reply)))
}

fn decode_key(b64: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::bad_request("'public_key' is not base64"))
}

/// Issues site `site_id` a certificate over `public_key`, in the same
/// transaction in which `admit` checks (and changes) the site's record;
/// the site's previous certificate is refused from then on.
fn certify(
    st: &AppState,
    ca: &SiteCa,
    site_id: &str,
    public_key: &[u8],
    admit: impl Fn(&mut Site) -> Result<(), ApiError>,
) -> Result<SiteJoinReply, ApiError> {
    st.store.write(|tx| {
        let mut s = tx.get::<Site>(site_id)?.ok_or_else(refused)?;
        admit(&mut s)?;
        let issued = ca
            .issue(&s.id, public_key)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(old) = s.cert_sha256.replace(issued.sha256.clone()) {
            s.revoked.push(old);
        }
        s.cert_expires_us = issued.expires_us;
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(SiteJoinReply {
            site_id: s.id.clone(),
            name: s.name.clone(),
            certificate: issued.pem,
            ca: ca.pem().to_string(),
            expires_at_us: issued.expires_us,
        })
    })
}

/// The active site a sync connection's certificate names.
async fn peer_site(state: &AppState, peer: Peer) -> Result<Site, ApiError> {
    let Some(fp) = peer.0 else {
        return Err(ApiError::unauthorized_msg(
            "A site certificate is required: join first",
        ));
    };
    let st = state.clone();
    let site = blocking(move || Ok(st.sites.by_certificate(&st.store, &fp)?)).await?;
    site.filter(|s| state::linked(&s.state))
        .ok_or_else(|| ApiError::forbidden("edge:sync:exchange"))
}

/// A site swaps its certificate for one over a new key; the old one is
/// refused from then on.
async fn rotate(
    State(state): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    raw: Bytes,
) -> Result<axum::Json<SiteJoinReply>, ApiError> {
    let site = peer_site(&state, peer).await?;
    let r: stratus_wire::sync::SiteRotateRequest = crate::json::decode(&raw)?;
    let public_key = decode_key(&r.public_key)?;
    let ca = state.sync.ca()?;
    let st = state.clone();
    let reply = blocking(move || {
        certify(&st, &ca, &site.id, &public_key, |s| {
            s.rotate = false;
            Ok(())
        })
    })
    .await?;
    tracing::info!(site = %reply.site_id, name = %reply.name, "site certificate rotated");
    Ok(axum::Json(reply))
}

/// Image data by its sha512, for a site (`Range: bytes=N-` resumes a
/// fetch the link cut short).
async fn blob(
    State(state): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let site = peer_site(&state, peer).await?;
    if key.len() != 128 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "A blob is named by its sha512 (128 hex digits)",
        ));
    }
    let path = state.image.blobs.blob_path(&key);
    let size = std::fs::metadata(&path)
        .map_err(|_| ApiError::not_found("blob", &key))?
        .len();
    let start = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => 0,
        Some(r) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n <= size)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "Only 'bytes=N-' ranges within the blob are served",
                )
            })?,
    };
    let body = crate::image::blobs::FileBody::open(&path, start, size - start)
        .map_err(|e| ApiError::internal(format!("reading blob {key}: {e}")))?;
    state.sites.touch(&site.id, |l| l.bytes_out += size - start);
    let mut resp = Response::new(body.into_body());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(size - start),
    );
    if start > 0 {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = header::HeaderValue::from_str(&format!(
            "bytes {start}-{}/{size}",
            size.saturating_sub(1)
        )) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// A site's answers to the requests its exchanges carried down.
async fn answers(
    State(state): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    let site = peer_site(&state, peer).await?;
    let list: Vec<stratus_wire::sync::TunnelAnswer> = crate::json::decode(&raw)?;
    state
        .sites
        .touch(&site.id, |l| l.bytes_in += raw.len() as u64);
    for a in list {
        state.sites.answer(a);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Keeps the zones a site reports below it; answers them, sorted.
async fn set_subtree(
    state: &AppState,
    site: &Site,
    zones: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut below = zones.to_vec();
    below.sort();
    below.dedup();
    below.retain(|z| z != &site.name);
    if below != site.subtree {
        let st = state.clone();
        let id = site.id.clone();
        let b = below.clone();
        blocking(move || {
            st.store.write(|tx| {
                let mut s = tx.fetch::<Site>(&id)?;
                s.subtree = b;
                s.updated_us = now_us();
                tx.update(&s)?;
                Ok::<_, ApiError>(())
            })?;
            st.sites.forget_routes();
            Ok(())
        })
        .await?;
    }
    Ok(below)
}

/// Keeps the nodes a site reports (its own and its sites'), when they
/// changed.
async fn set_nodes(
    state: &AppState,
    site: &Site,
    nodes: &[stratus_wire::sync::NodeSummary],
) -> Result<(), ApiError> {
    if nodes == site.nodes.as_slice() {
        return Ok(());
    }
    let st = state.clone();
    let id = site.id.clone();
    let nodes = nodes.to_vec();
    blocking(move || {
        st.store.write(|tx| {
            let mut s = tx.fetch::<Site>(&id)?;
            s.nodes = nodes;
            s.nodes_us = now_us();
            s.updated_us = s.nodes_us;
            tx.update(&s)?;
            Ok::<_, ApiError>(())
        })
    })
    .await
}

/// A site's actual state of its servers, applied in one transaction; the
/// answer acknowledges the site's revision it covered. A batch sent again
/// changes nothing (each status is a state, not a delta).
async fn up(
    State(state): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<axum::Json<stratus_wire::sync::UpReply>, ApiError> {
    let site = peer_site(&state, peer).await?;
    let body = if is_gzip(&headers, header::CONTENT_ENCODING) {
        gunzip(&raw)?
    } else {
        raw.to_vec()
    };
    let batch: stratus_wire::sync::UpBatch = crate::json::decode(&body)?;
    state
        .sites
        .touch(&site.id, |l| l.bytes_in += raw.len() as u64);
    let below = match &batch.zones {
        Some(z) => set_subtree(&state, &site, z).await?,
        None => site.subtree.clone(),
    };
    if let Some(nodes) = &batch.nodes {
        set_nodes(&state, &site, nodes).await?;
    }
    let zones: HashSet<String> = below
        .into_iter()
        .chain(std::iter::once(site.name.clone()))
        .collect();
    let st = state.clone();
    let site_name = site.name.clone();
    let changed = blocking(move || {
        st.store.write(|tx| {
            let mut n = 0;
            for s in &batch.servers {
                n += super::apply_status(tx, &zones, s)? as usize;
            }
            for body in &batch.adopt {
                n += super::adopt(tx, &site_name, &zones, body)? as usize;
            }
            Ok::<_, ApiError>(n)
        })
    })
    .await?;
    if changed > 0 {
        tracing::debug!(site = %site.name, servers = changed, "took the site's server states");
    }
    Ok(axum::Json(stratus_wire::sync::UpReply {
        acked: batch.up_to,
    }))
}

fn gunzip(raw: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(MAX_BODY + 1)
        .read_to_end(&mut out)
        .map_err(|_| ApiError::bad_request("The request body is not valid gzip"))?;
    if out.len() as u64 > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The exchange is too large",
        ));
    }
    Ok(out)
}

fn is_gzip(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"))
}

async fn exchange(
    State(state): State<AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let site = peer_site(&state, peer).await?;
    let body = if is_gzip(&headers, header::CONTENT_ENCODING) {
        gunzip(&raw)?
    } else {
        raw.to_vec()
    };
    let x: Exchange = crate::json::decode(&body)?;
    check_sync_version(x.version).map_err(ApiError::bad_request)?;
    // The zones below the site, as it reports them: servers in them go
    // down through it.
    set_subtree(&state, &site, &x.zones).await?;
    state.sites.touch(&site.id, |l| {
        l.acked = x.acked;
        l.software = x.software.clone();
        l.rtt_ms = x.rtt_ms;
        l.bytes_in += raw.len() as u64;
        l.exchanges += 1;
    });
    // Held at most half the time after which a silent site counts as
    // unreachable, so a healthy idle site never looks cut off.
    let cap = (state.sites.down_after_s / 2).clamp(1, MAX_WAIT_S);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(x.wait_s.min(cap));
    let mut watch = state.sites.watch();
    let mut asked = state.sites.requests_watch(&site.id);
    asked.borrow_and_update();
    let mut from = x.acked;
    let reply = loop {
        let st = state.clone();
        let keys_hash = x.keys_hash.clone();
        let site_id = site.id.clone();
        let cert = site.cert_sha256.clone();
        let (reply, rotate) = blocking(move || {
            // A site revoked (or rotated away from this certificate) while
            // its exchange waited gets nothing more.
            let now = st
                .store
                .get::<Site>(&site_id)?
                .filter(|s| state::linked(&s.state) && s.cert_sha256 == cert)
                .ok_or_else(|| ApiError::forbidden("edge:sync:exchange"))?;
            // The site's zones as its record says now (it reports new ones
            // on its upward link while this exchange waits).
            let zones: HashSet<String> = now
                .subtree
                .iter()
                .cloned()
                .chain(std::iter::once(now.name.clone()))
                .collect();
            Ok((build_reply(&st, &zones, from, &keys_hash)?, now.rotate))
        })
        .await?;
        if rotate {
            break ExchangeReply { rotate, ..reply };
        }
        let requests = state.sites.take_requests(&site.id);
        if !requests.is_empty() {
            break ExchangeReply { requests, ..reply };
        }
        let worth = !reply.changes.is_empty()
            || reply.snapshot
            || reply.more
            || reply.fernet_keys.is_some();
        if worth || tokio::time::Instant::now() >= deadline {
            break reply;
        }
        // Nothing for this site: wait for the log to move past what was
        // looked at (or the deadline), without answering.
        from = reply.revision;
        let moved = tokio::select! {
            r = tokio::time::timeout_at(deadline, watch.wait_for(|v| *v > from)) => matches!(r, Ok(Ok(_))),
            r = asked.changed() => r.is_ok(),
        };
        if !moved {
            break ExchangeReply {
                revision: from,
                ..Default::default()
            };
        }
    };
    let reply = ExchangeReply {
        site_name: site.name.clone(),
        ..reply
    };
    let json = serde_json::to_vec(&reply).map_err(|e| ApiError::internal(e.to_string()))?;
    let (out, encoding) = if is_gzip(&headers, header::ACCEPT_ENCODING) {
        (super::gzip(&json), Some("gzip"))
    } else {
        (json, None)
    };
    state
        .sites
        .touch(&site.id, |l| l.bytes_out += out.len() as u64);
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], out).into_response();
    if let Some(e) = encoding {
        resp.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static(e),
        );
    }
    Ok(resp)
}

/// What a site at `acked` gets next: the changes after it that it needs
/// (a snapshot when it starts or the log was compacted past it), and the
/// Fernet keys when the site's differ.
fn build_reply(
    state: &AppState,
    zones: &HashSet<String>,
    acked: i64,
    site_keys: &str,
) -> Result<ExchangeReply, ApiError> {
    let keys_dir = state.config.data_dir.join("fernet-keys");
    let keys = super::read_keys(&keys_dir)
        .map_err(|e| ApiError::internal(format!("reading the fernet keys: {e}")))?;
    let fernet_keys = (super::keys_hash(&keys) != site_keys).then_some(keys);
    let changes = if acked <= 0 {
        Err(StoreError::Compacted {
            since: acked,
            oldest: 1,
        })
    } else {
        state.store.changes_since(acked, BATCH)
    };
    let mut reply = match changes {
        Ok(changes) => {
            let more = changes.len() == BATCH;
            let revision = changes.last().map(|c| c.seq).unwrap_or(acked);
            let changes = changes
                .into_iter()
                .filter(|c| match &c.body {
                    Some(b) => super::goes_down(zones, &c.kind, b),
                    None => super::KINDS.contains(&c.kind.as_str()),
                })
                .map(|c| SyncChange {
                    kind: c.kind,
                    id: c.id,
                    body: c.body,
                })
                .collect();
            ExchangeReply {
                revision,
                changes,
                more,
                ..Default::default()
            }
        }
        Err(StoreError::Compacted { .. }) => {
            let snap = state.store.snapshot(super::KINDS)?;
            let changes = snap
                .documents
                .into_iter()
                .filter(|d| super::goes_down(zones, &d.kind, &d.body))
                .map(|d| SyncChange {
                    kind: d.kind,
                    id: d.id,
                    body: Some(d.body),
                })
                .collect();
            ExchangeReply {
                revision: snap.revision,
                changes,
                snapshot: true,
                snapshot_kinds: super::KINDS.iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    reply.fernet_keys = fernet_keys;
    Ok(reply)
}
