//! A site's side of sync: it joins its parent once (a one-time token for
//! a client certificate; the key never leaves the site), keeps what it
//! got in `DATA_DIR/sync/site.json`, and from then on dials the parent's
//! sync listener and exchanges over mutual TLS: a long poll that brings
//! down the changes after the site's cursor, applied each in one store
//! transaction with the cursor. The parent never dials a site.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stratus_wire::sync::{
    Exchange, ExchangeReply, SYNC_SERVER_NAME, SYNC_VERSION, SiteJoinReply, SiteJoinRequest,
};

use super::pki::{SiteIdentity, fingerprint, pem_to_der};
use crate::timeutil::{iso_us, now_us};
use crate::{ApiError, AppState};

/// The meta key of the parent revision a site has applied everything up
/// to; it moves in the same transaction as the changes.
pub const CURSOR: &str = "sync.parent_revision";
/// The longest pause between tries to reach the parent: a link that
/// comes back is in use again within this.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long the parent may hold an exchange while nothing is new.
const IDLE_WAIT_S: u64 = 55;

/// What a site knows of its link, for `GET /edge/v1/parent`.
#[derive(Debug, Clone, Default)]
pub struct ParentStatus {
    pub parent: Option<String>,
    pub site_id: Option<String>,
    pub name: Option<String>,
    pub connected: bool,
    pub last_exchange_us: i64,
    pub revision: i64,
    pub applied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub rtt_ms: u64,
    pub last_error: Option<String>,
}

impl ParentStatus {
    pub fn view(&self) -> Value {
        json!({
            "url": self.parent,
            "site_id": self.site_id,
            "name": self.name,
            "state": match (&self.parent, self.connected) {
                (None, _) => "none",
                (Some(_), true) => "connected",
                (Some(_), false) => "disconnected",
            },
            "last_exchange": (self.last_exchange_us > 0).then(|| iso_us(self.last_exchange_us)),
            "revision": self.revision,
            "changes_applied": self.applied,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rtt_ms": self.rtt_ms,
            "last_error": self.last_error,
        })
    }
}

/// What a site keeps from its join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Joined {
    pub(super) parent: String,
    site_id: String,
    name: String,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    /// When the certificate expires (µs); 0 when not known.
    #[serde(default)]
    expires_at_us: i64,
    /// SHA-256 of the join token redeemed: a site started with another
    /// token (after its certificate was revoked) joins again.
    #[serde(default)]
    token_sha256: String,
}

fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    fingerprint(&sha2::Sha256::digest(token.trim().as_bytes()))
}

/// A site asks for a new certificate this long before its own expires.
const ROTATE_BEFORE_US: i64 = 30 * 24 * 3600 * 1_000_000;

impl Joined {
    pub(super) fn identity(&self) -> SiteIdentity {
        SiteIdentity {
            key_pem: self.key_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }
}

/// How a site reaches its parent.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The parent's sync listener: `https://HOST:PORT` or `HOST:PORT`.
    pub parent: String,
    /// The one-time token, for the first start.
    pub join_token: Option<String>,
}

/// The `HOST:PORT` of a parent URL.
pub(super) fn address(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("sync://"))
        .unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or("");
    if rest.is_empty() {
        return Err(format!(
            "{url:?} is not a parent address (https://HOST:PORT)"
        ));
    }
    Ok(
        if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:9443")
        },
    )
}

fn set_status(state: &AppState, f: impl FnOnce(&mut ParentStatus)) {
    f(&mut state.sync.parent.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Runs the site's link until the process ends: join if needed, then
/// exchange, reconnecting with a growing pause when the link drops.
pub async fn run(state: AppState, cfg: LinkConfig) {
    set_status(&state, |s| s.parent = Some(cfg.parent.clone()));
    let mut joined = loop {
        match joined_or_join(&state, &cfg).await {
            Ok(j) => break j,
            Err(e) => {
                tracing::warn!(parent = %cfg.parent, error = %e, "cannot join the parent; trying again");
                set_status(&state, |s| s.last_error = Some(e));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    set_status(&state, |s| {
        s.site_id = Some(joined.site_id.clone());
        s.name = Some(joined.name.clone());
    });
    state.sites.set_own_zone(&joined.name);
    tokio::spawn(up_loop(state.clone(), cfg.parent.clone()));
    let st = state.clone();
    let parent = cfg.parent.clone();
    state.sites.set_blob_fetcher(Arc::new(move |key, size| {
        Box::pin(fetch_blob(st.clone(), parent.clone(), key, size))
    }));
    let mut pause = Duration::from_secs(1);
    loop {
        match session(&state, &mut joined).await {
            Ok(()) => pause = Duration::from_secs(1),
            Err(e) => {
                let was = state
                    .sync
                    .parent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .connected;
                if was {
                    tracing::warn!(parent = %joined.parent, error = %e, "the link to the parent dropped; the site goes on by itself");
                } else {
                    tracing::debug!(parent = %joined.parent, error = %e, "the parent is still unreachable");
                }
                set_status(&state, |s| {
                    s.connected = false;
                    s.last_error = Some(e);
                });
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

type Sender = SendRequest<Full<Bytes>>;

pub(super) async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Sender, u64), String> {
    let t0 = Instant::now();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("connecting to {addr} timed out"))?
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SYNC_SERVER_NAME).map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("the TLS handshake with {addr} timed out"))?
    .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let rtt = t0.elapsed().as_millis() as u64;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, rtt))
}

/// One request on the link: status, body (decompressed) and the bytes
/// that crossed it.
pub(super) async fn request(
    sender: &mut Sender,
    method: &str,
    path: &str,
    body: Vec<u8>,
    gzip: bool,
    timeout: Duration,
) -> Result<(u16, Vec<u8>, u64, u64), String> {
    let sent = body.len() as u64;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", SYNC_SERVER_NAME)
        .header("content-type", "application/json");
    if gzip {
        req = req
            .header("content-encoding", "gzip")
            .header("accept-encoding", "gzip");
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| "the parent did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let zipped = resp
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let raw = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .map_err(|_| "the parent's answer stalled".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    let got = raw.len() as u64;
    let body = if zipped {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("the parent's answer is not valid gzip: {e}"))?;
        out
    } else {
        raw.to_vec()
    };
    Ok((status, body, sent, got))
}

/// POSTs `body` on the link, counting its bytes in the link's status;
/// the answer must have status `expect` (`what` names the request).
async fn post_counted(
    state: &AppState,
    sender: &mut Sender,
    path: &str,
    body: Vec<u8>,
    gzip: bool,
    expect: u16,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (status, text, sent, got) =
        request(sender, "POST", path, body, gzip, Duration::from_secs(60)).await?;
    set_status(state, |s| {
        s.bytes_up += sent;
        s.bytes_down += got;
    });
    if status != expect {
        return Err(format!(
            "the parent refused {what} ({status}): {}",
            String::from_utf8_lossy(&text)
        ));
    }
    Ok(text)
}

/// POSTs `body` as JSON; the answer must have status `expect` and parse
/// as a `T` (`what` names the request in the error).
async fn call<T: serde::de::DeserializeOwned>(
    sender: &mut Sender,
    path: &str,
    body: &impl Serialize,
    expect: u16,
    what: &str,
) -> Result<T, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let (status, text, _, _) =
        request(sender, "POST", path, body, false, Duration::from_secs(30)).await?;
    if status != expect {
        return Err(format!(
            "the parent refused {what} ({status}): {}",
            String::from_utf8_lossy(&text)
        ));
    }
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

fn site_file(state: &AppState) -> std::path::PathBuf {
    state.sync.dir().join("site.json")
}

/// The site's join, from its file or by redeeming the token.
async fn joined_or_join(state: &AppState, cfg: &LinkConfig) -> Result<Joined, String> {
    let file = site_file(state);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let j: Joined =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let fresh = cfg
                .join_token
                .as_deref()
                .is_some_and(|t| token_sha256(t) != j.token_sha256);
            if fresh {
                tracing::info!(site = %j.site_id, "started with a new join token: joining the parent again");
                return join_to(cfg, &file).await;
            }
            if j.parent != cfg.parent {
                tracing::warn!(joined = %j.parent, given = %cfg.parent, "this site joined another parent address; dialling the one given");
            }
            Ok(Joined {
                parent: cfg.parent.clone(),
                ..j
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => join_to(cfg, &file).await,
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// A join kept in `file` by [`join_to`], if there is one.
pub(super) fn joined_from(file: &std::path::Path) -> Option<Joined> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// Redeems the join token: a certificate for a new key, kept in `file`.
pub(super) async fn join_to(cfg: &LinkConfig, file: &std::path::Path) -> Result<Joined, String> {
    let token = cfg.join_token.as_deref().ok_or_else(|| {
        "this site has not joined its parent yet: start it with --join-token (from `stratus admin site create`)".to_string()
    })?;
    let ca_hash = token
        .trim()
        .rsplit('.')
        .next()
        .filter(|h| h.len() == 64)
        .ok_or("the join token is malformed")?
        .to_string();
    let addr = address(&cfg.parent)?;
    // Discovery: fetch the CA over any certificate; trust it only when it
    // is the one the token names.
    let tls = SiteIdentity::discovery_config().map_err(|e| e.to_string())?;
    let (mut s, _) = connect(&addr, tls).await?;
    let (status, ca_pem, _, _) = request(
        &mut s,
        "GET",
        "/sync/v1/ca",
        Vec::new(),
        false,
        Duration::from_secs(30),
    )
    .await?;
    let ca_pem = String::from_utf8(ca_pem).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("the parent answered {status} for its CA"));
    }
    let der = pem_to_der(&ca_pem).map_err(|e| e.to_string())?;
    if fingerprint(der.as_ref()) != ca_hash {
        return Err(format!(
            "the CA at {addr} is not the one the join token names: refusing to join it"
        ));
    }
    let (key_pem, public) = SiteIdentity::new_key().map_err(|e| e.to_string())?;
    let tls = SiteIdentity::join_config(&ca_pem).map_err(|e| e.to_string())?;
    let (mut s, _) = connect(&addr, tls).await?;
    let req = SiteJoinRequest {
        token: token.trim().to_string(),
        public_key: {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&public)
        },
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let reply: SiteJoinReply = call(&mut s, "/sync/v1/join", &req, 201, "the join").await?;
    let joined = Joined {
        parent: cfg.parent.clone(),
        site_id: reply.site_id,
        name: reply.name,
        key_pem,
        cert_pem: reply.certificate,
        ca_pem: reply.ca,
        expires_at_us: reply.expires_at_us,
        token_sha256: token_sha256(token),
    };
    save(file, &joined)?;
    tracing::info!(site = %joined.site_id, name = %joined.name, parent = %cfg.parent, "joined the parent");
    Ok(joined)
}

fn save(file: &std::path::Path, j: &Joined) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = file.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(j).map_err(|e| e.to_string())?)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))
}

/// The parent revision this site has applied everything up to.
pub fn cursor(state: &AppState) -> Result<i64, ApiError> {
    Ok(state
        .store
        .meta_get(CURSOR)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Swaps the site's certificate for a new one over the current link, and
/// keeps it; the next connection uses it.
async fn rotate(state: &AppState, sender: &mut Sender, joined: &mut Joined) -> Result<(), String> {
    use base64::Engine;
    let (key_pem, public) = SiteIdentity::new_key().map_err(|e| e.to_string())?;
    let req = stratus_wire::sync::SiteRotateRequest {
        public_key: base64::engine::general_purpose::STANDARD.encode(&public),
    };
    let reply: SiteJoinReply =
        call(sender, "/sync/v1/rotate", &req, 200, "a new certificate").await?;
    let next = Joined {
        key_pem,
        cert_pem: reply.certificate,
        ca_pem: reply.ca,
        expires_at_us: reply.expires_at_us,
        ..joined.clone()
    };
    save(&site_file(state), &next)?;
    *joined = next;
    tracing::info!(site = %joined.site_id, "rotated the site certificate");
    Ok(())
}

/// One connection's exchanges, until it fails (or the certificate was
/// rotated: the next connection presents the new one).
async fn session(state: &AppState, joined: &mut Joined) -> Result<(), String> {
    let addr = address(&joined.parent)?;
    let tls = joined
        .identity()
        .client_config()
        .map_err(|e| e.to_string())?;
    let (mut sender, rtt) = connect(&addr, tls).await?;
    set_status(state, |s| {
        s.rtt_ms = rtt;
        s.last_error = None;
    });
    let keys_dir = state.config.data_dir.join("fernet-keys");
    let mut more = false;
    loop {
        let st = state.clone();
        let (acked, zones) = tokio::task::spawn_blocking(move || {
            Ok::<_, ApiError>((cursor(&st)?, st.sites.subtree_zones(&st.store)?))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
        let keys = super::read_keys(&keys_dir).unwrap_or_default();
        let (up, down) = {
            let p = state.sync.parent.lock().unwrap_or_else(|e| e.into_inner());
            (p.bytes_up, p.bytes_down)
        };
        let wait_s = if more { 0 } else { IDLE_WAIT_S };
        let x = Exchange {
            version: SYNC_VERSION,
            acked,
            software: env!("CARGO_PKG_VERSION").into(),
            wait_s,
            keys_hash: super::keys_hash(&keys),
            rtt_ms: rtt,
            bytes_up: up,
            bytes_down: down,
            zones,
        };
        let body = super::gzip(&serde_json::to_vec(&x).map_err(|e| e.to_string())?);
        let (status, text, sent, got) = request(
            &mut sender,
            "POST",
            "/sync/v1/exchange",
            body,
            true,
            Duration::from_secs(wait_s + 30),
        )
        .await?;
        set_status(state, |s| {
            s.bytes_up += sent;
            s.bytes_down += got;
        });
        if status != 200 {
            return Err(format!(
                "the parent refused the exchange ({status}): {}",
                String::from_utf8_lossy(&text)
            ));
        }
        let reply: ExchangeReply = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        let expiring =
            joined.expires_at_us > 0 && joined.expires_at_us - now_us() < ROTATE_BEFORE_US;
        if reply.rotate || expiring {
            return rotate(state, &mut sender, joined).await;
        }
        more = reply.more;
        if !reply.site_name.is_empty() {
            state.sites.set_own_zone(&reply.site_name);
        }
        if !reply.requests.is_empty() {
            let mut out = Vec::new();
            for r in &reply.requests {
                out.push(run_request(state, r).await);
            }
            let body = serde_json::to_vec(&out).map_err(|e| e.to_string())?;
            post_counted(
                state,
                &mut sender,
                "/sync/v1/answers",
                body,
                false,
                204,
                "the answers",
            )
            .await?;
        }
        let n = reply.changes.len() as u64;
        let revision = reply.revision;
        let st = state.clone();
        tokio::task::spawn_blocking(move || apply_reply(&st, reply))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("applying the parent's changes: {}", e.message))?;
        set_status(state, |s| {
            s.connected = true;
            s.last_exchange_us = now_us();
            s.revision = revision;
            s.applied += n;
        });
    }
}

/// This site's nodes and those its own sites reported: what its parent
/// shows of the site's resources and health.
fn node_summaries(state: &AppState) -> Result<Vec<stratus_wire::sync::NodeSummary>, ApiError> {
    let zone = state.sites.own_zone().unwrap_or_default();
    let mut out = crate::compute::nodes::summaries(state, &zone)?;
    for site in state
        .store
        .list::<crate::sites::Site>(&stratus_store::Query::all())?
    {
        out.extend(site.nodes);
    }
    Ok(out)
}

/// Runs one operator request the parent sent down.
async fn run_request(
    state: &AppState,
    r: &stratus_wire::sync::TunnelRequest,
) -> stratus_wire::sync::TunnelAnswer {
    let answer = |status: u16, body: String| stratus_wire::sync::TunnelAnswer {
        id: r.id.clone(),
        status,
        body,
    };
    match r.kind.as_str() {
        "console_output" => {
            let st = state.clone();
            let id = r.server_id.clone();
            let server = tokio::task::spawn_blocking(move || {
                st.store.get::<crate::compute::model::Server>(&id)
            })
            .await;
            let s = match server {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) => {
                    return answer(404, format!("Instance {} could not be found.", r.server_id));
                }
                _ => return answer(500, "The site could not read the server.".into()),
            };
            match crate::compute::console_text(state, &s, r.length.map(|n| n as usize)).await {
                Ok(text) => answer(200, text),
                Err(e) => answer(e.status.as_u16(), e.message),
            }
        }
        "server_action" => {
            let (status, body) = crate::compute::run_forwarded(state, r).await;
            answer(status, body)
        }
        other => answer(400, format!("This site does not take {other:?} requests")),
    }
}

/// Fetches image data (blob `key`, its sha512) from the parent into this
/// site's blob store: one fetch per blob at a time, resumed from what an
/// earlier try left (a `Range` request), checked against its sha512.
async fn fetch_blob(state: AppState, parent: String, key: String, size: u64) -> Result<(), String> {
    static FETCHING: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    if key.len() != 128 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{key:?} is not a sha512"));
    }
    let one = FETCHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.clone())
        .or_default()
        .clone();
    let _held = one.lock().await;
    if state.image.blobs.blob_path(&key).exists() {
        return Ok(());
    }
    let dir = state.sync.dir().join("blobs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let part = dir.join(format!("{key}.part"));
    let mut last = String::new();
    for attempt in 0..5u64 {
        match fetch_once(&state, &parent, &key, size, &part).await {
            Ok(()) => {
                last.clear();
                break;
            }
            Err(e) => {
                tracing::info!(blob = %key, error = %e, "fetching image data from the parent; will resume");
                last = e;
                tokio::time::sleep(Duration::from_secs(1 + attempt)).await;
            }
        }
    }
    if !last.is_empty() {
        return Err(last);
    }
    let st = state.clone();
    let (p, k) = (part.clone(), key.clone());
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        use sha2::Digest;
        use std::io::Read;
        let mut f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
        let mut h = sha2::Sha512::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != k {
            let _ = std::fs::remove_file(&p);
            return Err(
                "the data fetched does not match its sha512; it will be fetched again".into(),
            );
        }
        let _g = st.image.blobs.lock();
        st.image.blobs.commit(&p, &k).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    tracing::info!(blob = %key, bytes = size, "image data fetched from the parent");
    Ok(())
}

/// One try at the rest of a blob: appends to `part` from where it ends.
async fn fetch_once(
    state: &AppState,
    parent: &str,
    key: &str,
    size: u64,
    part: &std::path::Path,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if size > 0 && have == size {
        return Ok(());
    }
    let file = site_file(state);
    let joined: Joined = serde_json::from_str(
        &std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let tls = joined
        .identity()
        .client_config()
        .map_err(|e| e.to_string())?;
    let (mut sender, _) = connect(&address(parent)?, tls).await?;
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("/sync/v1/blobs/{key}"))
        .header("host", SYNC_SERVER_NAME);
    if have > 0 {
        req = req.header("range", format!("bytes={have}-"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "the parent did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = match resp.status().as_u16() {
        206 => tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(|e| e.to_string())?,
        200 => tokio::fs::File::create(part)
            .await
            .map_err(|e| e.to_string())?,
        s => return Err(format!("the parent answered {s} for the image data")),
    };
    let mut body = resp.into_body();
    let mut got = 0u64;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .map_err(|_| "the image data stalled".to_string())?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await.map_err(|e| e.to_string())?;
            got += data.len() as u64;
        }
    }
    out.sync_all().await.map_err(|e| e.to_string())?;
    set_status(state, |s| s.bytes_down += got);
    Ok(())
}

/// The meta key of this site's own revision its parent has taken the
/// server states up to.
pub const UP_CURSOR: &str = "sync.up_revision";
/// Server changes read per upward batch.
const UP_BATCH: usize = 500;
/// How often at most the upward link sums the site's nodes.
const NODES_EVERY: Duration = Duration::from_secs(5);

/// Brings this site's state of its parent's servers up, on a connection of
/// its own, whenever the site's change log moves.
async fn up_loop(state: AppState, parent: String) {
    let mut pause = Duration::from_secs(1);
    loop {
        match up_session(&state, &parent).await {
            Ok(()) => pause = Duration::from_secs(1),
            Err(e) => {
                tracing::debug!(error = %e, "the upward link is down; states wait in the change log")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

async fn up_session(state: &AppState, parent: &str) -> Result<(), String> {
    let file = site_file(state);
    let joined: Joined = serde_json::from_str(
        &std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let addr = address(parent)?;
    let tls = joined
        .identity()
        .client_config()
        .map_err(|e| e.to_string())?;
    let (mut sender, _) = connect(&addr, tls).await?;
    let mut watch = state.sites.watch();
    // The zones below this site and the nodes, as last told to the parent.
    let mut told: Option<Vec<String>> = None;
    let mut told_nodes: Option<Vec<stratus_wire::sync::NodeSummary>> = None;
    // The nodes are summed at most every NODES_EVERY (it reads every
    // server), not on each move of a busy site's log.
    let mut nodes_at: Option<(std::time::Instant, Vec<stratus_wire::sync::NodeSummary>)> = None;
    loop {
        let seen = *watch.borrow_and_update();
        let st = state.clone();
        let cached = nodes_at
            .as_ref()
            .filter(|(at, _)| at.elapsed() < NODES_EVERY)
            .map(|(_, n)| n.clone());
        // A sum taken from the cache is looked at again once it is stale.
        let recheck = if cached.is_some() {
            NODES_EVERY
        } else {
            Duration::from_secs(30)
        };
        let (from, mut batch, zones, nodes) = tokio::task::spawn_blocking(move || {
            let (from, batch) = pending_up(&st)?;
            let nodes = match cached {
                Some(n) => n,
                None => node_summaries(&st)?,
            };
            Ok::<_, ApiError>((from, batch, st.sites.subtree_zones(&st.store)?, nodes))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
        if nodes_at
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= NODES_EVERY)
        {
            nodes_at = Some((std::time::Instant::now(), nodes.clone()));
        }
        let new_zones = told.as_ref() != Some(&zones);
        let new_nodes = told_nodes.as_ref() != Some(&nodes);
        if batch.up_to > from || new_zones || new_nodes {
            let to = batch.up_to;
            if new_zones {
                batch.zones = Some(zones.clone());
            }
            if new_nodes {
                batch.nodes = Some(nodes.clone());
            }
            if !batch.servers.is_empty() || !batch.adopt.is_empty() || new_zones || new_nodes {
                let body = super::gzip(&serde_json::to_vec(&batch).map_err(|e| e.to_string())?);
                post_counted(
                    state,
                    &mut sender,
                    "/sync/v1/up",
                    body,
                    true,
                    200,
                    "the site's states",
                )
                .await?;
                told = Some(zones);
                told_nodes = Some(nodes);
            }
            let st = state.clone();
            tokio::task::spawn_blocking(move || {
                st.store.write(|tx| tx.meta_set(UP_CURSOR, &to.to_string()))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            continue;
        }
        // Nothing new: wait for the log to move (or look again in 30 s).
        let _ = tokio::time::timeout(recheck, watch.wait_for(|v| *v > seen)).await;
    }
}

/// The server states the parent has not taken yet: from this site's own
/// change log after the upward cursor (or every server the parent sent,
/// when the log was compacted past it). Answers the cursor and the batch.
fn pending_up(state: &AppState) -> Result<(i64, stratus_wire::sync::UpBatch), ApiError> {
    use stratus_store::Record;
    let from: i64 = state
        .store
        .meta_get(UP_CURSOR)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (ids, up_to) = match state.store.changes_since(from, UP_BATCH) {
        Ok(changes) => {
            let up_to = changes.last().map(|c| c.seq).unwrap_or(from);
            let mut ids: Vec<String> = changes
                .into_iter()
                .filter(|c| c.kind == crate::compute::model::Server::KIND)
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids.dedup();
            (ids, up_to)
        }
        Err(stratus_store::StoreError::Compacted { .. }) => {
            let up_to = state.store.last_revision()?;
            let ids = state
                .store
                .list::<crate::compute::model::Server>(&stratus_store::Query::all())?
                .into_iter()
                .map(|s| s.id)
                .collect();
            (ids, up_to)
        }
        Err(e) => return Err(e.into()),
    };
    let mut servers = Vec::new();
    let mut adopt = Vec::new();
    for id in ids {
        let s = state.store.get::<crate::compute::model::Server>(&id)?;
        // Servers made here go up whole until the parent has taken them.
        if let Some(s) = s.as_ref().filter(|s| s.parent_generation == 0) {
            adopt.push(serde_json::to_string(s).map_err(stratus_store::StoreError::from)?);
            continue;
        }
        servers.push(super::server_status(&id, s.as_ref()));
    }
    Ok((
        from,
        stratus_wire::sync::UpBatch {
            up_to,
            servers,
            zones: None,
            adopt,
            nodes: None,
        },
    ))
}

/// Applies one answer: its changes and the cursor in one transaction (a
/// batch already applied is passed over), then the Fernet keys.
pub fn apply_reply(state: &AppState, reply: ExchangeReply) -> Result<(), ApiError> {
    state.store.write(|tx| {
        let at: i64 = tx
            .meta_get(CURSOR)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !reply.snapshot && reply.revision <= at {
            return Ok::<_, ApiError>(());
        }
        for c in &reply.changes {
            super::apply(tx, c)?;
        }
        if reply.snapshot {
            for kind in &reply.snapshot_kinds {
                let keep: std::collections::HashSet<&str> = reply
                    .changes
                    .iter()
                    .filter(|c| &c.kind == kind)
                    .map(|c| c.id.as_str())
                    .collect();
                super::prune(tx, kind, &keep)?;
            }
        }
        tx.meta_set(CURSOR, &reply.revision.to_string())?;
        Ok(())
    })?;
    if let Some(keys) = &reply.fernet_keys {
        let dir = state.config.data_dir.join("fernet-keys");
        super::write_keys(&dir, keys)
            .map_err(|e| ApiError::internal(format!("writing the parent's fernet keys: {e}")))?;
        state.identity.refresh_keys();
        tracing::info!(keys = keys.len(), "took the parent's fernet keys");
    }
    precache_here(state, &reply)?;
    if reply.snapshot {
        tracing::info!(
            documents = reply.changes.len(),
            revision = reply.revision,
            "applied a snapshot from the parent"
        );
    }
    Ok(())
}

/// Image cache requests for this site's own zone: every node of the site
/// is asked to fetch the images (its first read brings the data over the
/// link, once). Requests for a zone below go on down with the stream.
fn precache_here(state: &AppState, reply: &ExchangeReply) -> Result<(), ApiError> {
    use crate::compute::model::{ComputeNode, SitePrecache};
    use stratus_store::Record;
    let own = state.sites.own_zone();
    let mut images: Vec<String> = Vec::new();
    for c in reply
        .changes
        .iter()
        .filter(|c| c.kind == SitePrecache::KIND)
    {
        let Some(p) = c
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<SitePrecache>(b).ok())
        else {
            continue;
        };
        if Some(&p.zone) == own.as_ref() {
            images.extend(p.images);
        }
    }
    if images.is_empty() {
        return Ok(());
    }
    state.store.write(|tx| {
        for mut n in tx.list::<ComputeNode>(&stratus_store::Query::all())? {
            let before = n.precache.len();
            for i in &images {
                if !n.precache.contains(i) {
                    n.precache.push(i.clone());
                }
            }
            if n.precache.len() != before {
                tx.update(&n)?;
            }
        }
        Ok::<_, ApiError>(())
    })?;
    tracing::info!(images = ?images, "the parent asked this site to cache images on its nodes");
    // The site's own copy first: the data crosses the link now, once,
    // whatever its nodes' drivers keep.
    for i in &images {
        let Some(img) = state.store.get::<crate::image::model::Image>(i)? else {
            continue;
        };
        let (Some(key), Some(size)) = (img.blob.clone(), img.size) else {
            continue;
        };
        if state.image.blobs.blob_path(&key).exists() {
            continue;
        }
        let st = state.clone();
        let id = i.clone();
        tokio::runtime::Handle::current().spawn(async move {
            match st.sites.fetch_blob(&key, size).await {
                Some(Err(e)) => {
                    tracing::warn!(image = %id, error = %e, "could not cache the image's data at this site")
                }
                Some(Ok(())) => tracing::info!(image = %id, "cached the image's data at this site"),
                None => {}
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn parent_addresses() {
        assert_eq!(
            address("https://root.example:9443").unwrap(),
            "root.example:9443"
        );
        assert_eq!(address("https://10.0.0.1:7000/").unwrap(), "10.0.0.1:7000");
        assert_eq!(address("root.example").unwrap(), "root.example:9443");
        assert!(address("https://").is_err());
    }
}
