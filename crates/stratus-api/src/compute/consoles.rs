//! Remote consoles: Nova's `POST /servers/{id}/remote-consoles` (2.6+)
//! and the older `os-getSerialConsole` action hand out a URL with a
//! one-time token; a websocket on `GET /websockify` with that token is
//! joined to the VM's serial port through its node's agent
//! (`GET /instances/{id}/serial` on the agent's listener, which then
//! carries raw bytes both ways). `GET /os-console-auth-tokens/{token}`
//! (admin) shows what an unused token is for.
//!
//! Only the `serial` type exists: VMs run without a display (no VNC or
//! SPICE), and a container has no serial port. A token is good for one
//! connection within [`TOKEN_TTL`] of being issued; it lives in the
//! controller's memory, so a restarted controller forgets the unused ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::{fetch, require_member};
use super::model::Server;
use super::states::vm;
use super::{Mv, body, policy_denied};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::{ApiError, AppState};

/// How long an issued console URL stays good (Nova's `token_ttl`).
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The biggest frame sent to a console client. Serial output comes in
/// small pieces anyway, and some simple clients (Tempest's among them)
/// read only the one-byte payload length.
const FRAME_MAX: usize = 125;

/// Issued console tokens not used yet.
#[derive(Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, Ticket>>,
}

/// What one token opens.
#[derive(Clone)]
struct Ticket {
    server: String,
    host: String,
    agent_url: String,
    agent_key: String,
    expires: Instant,
}

impl Tokens {
    fn issue(&self, t: Ticket) -> String {
        let token = uuid::Uuid::new_v4().to_string();
        let mut m = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.retain(|_, t| t.expires > now);
        m.insert(token.clone(), t);
        token
    }

    /// The token's ticket, which is used up by taking it.
    fn take(&self, token: &str) -> Option<Ticket> {
        let mut m = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(token).filter(|t| t.expires > Instant::now())
    }

    fn peek(&self, token: &str) -> Option<Ticket> {
        let m = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        m.get(token).filter(|t| t.expires > Instant::now()).cloned()
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers/{id}/remote-consoles", post(create))
        .route("/os-console-auth-tokens/{token}", get(show_token))
}

/// The websocket the console URLs point at, outside `/compute` as Nova's
/// console proxies are.
pub fn proxy_routes() -> Router<AppState> {
    Router::new().route("/websockify", get(websocket))
}

const PROTOCOLS: &[&str] = &["vnc", "spice", "serial", "rdp", "mks"];
const TYPES: &[&str] = &[
    "novnc",
    "xvpvnc",
    "spice-html5",
    "serial",
    "rdp-html5",
    "webmks",
];

/// `POST /servers/{id}/remote-consoles` (2.6+).
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    if !mv.at_least(6) {
        return Err(super::no_such_resource());
    }
    require_member(&ctx, "os_compute_api:os-remote-consoles")?;
    let b = body(&raw)?;
    let rc = b
        .get("remote_console")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request("Invalid input for field/attribute remote_console: it is required and must be an object")
        })?;
    if let Some(k) = rc
        .keys()
        .find(|k| !matches!(k.as_str(), "protocol" | "type"))
    {
        return Err(ApiError::bad_request(format!(
            "Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let field = |name: &str, allowed: &[&str]| -> Result<String, ApiError> {
        let v = rc
            .get(name)
            .ok_or_else(|| ApiError::bad_request(format!("'{name}' is a required property")))?;
        v.as_str()
            .filter(|s| allowed.contains(s))
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for field/attribute {name}. Value: {v}. {v} is not one of {allowed:?}"
                ))
            })
    };
    let protocol = field("protocol", PROTOCOLS)?;
    let kind = field("type", TYPES)?;
    if (protocol == "mks" || kind == "webmks") && !mv.at_least(8) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute protocol. Value: {protocol}. mks needs microversion 2.8 or later"
        )));
    }
    let fits = matches!(
        (protocol.as_str(), kind.as_str()),
        ("vnc", "novnc" | "xvpvnc")
            | ("spice", "spice-html5")
            | ("serial", "serial")
            | ("rdp", "rdp-html5")
            | ("mks", "webmks")
    );
    if !fits {
        return Err(ApiError::bad_request(format!(
            "Invalid console type {kind} for protocol {protocol}."
        )));
    }
    let s = fetch(&state, &ctx, &id)?;
    if protocol != "serial" {
        return Err(unavailable(
            &kind,
            "virtual machines here run without a display; ask for the serial console",
        ));
    }
    let url = serial_url(&state, &s).await?;
    Ok(axum::Json(json!({"remote_console": {
        "protocol": "serial",
        "type": "serial",
        "url": url,
    }}))
    .into_response())
}

/// The legacy console actions (`os-getSerialConsole` and the display
/// ones), answered in their `{"console": {...}}` shape.
pub async fn legacy_action(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    action: &str,
    arg: &Value,
) -> Result<Response, ApiError> {
    require_member(ctx, "os_compute_api:os-remote-consoles")?;
    let kind = arg
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("'type' is a required property"))?;
    let allowed: &[&str] = match action {
        "os-getSerialConsole" => &["serial"],
        "os-getVNCConsole" => &["novnc", "xvpvnc"],
        "os-getSPICEConsole" => &["spice-html5"],
        _ => &["rdp-html5"],
    };
    if !allowed.contains(&kind) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute type. Value: {kind}. '{kind}' is not one of {allowed:?}"
        )));
    }
    if action != "os-getSerialConsole" {
        return Err(unavailable(
            kind,
            "virtual machines here run without a display; ask for the serial console",
        ));
    }
    let url = serial_url(state, s).await?;
    Ok(axum::Json(json!({"console": {"type": "serial", "url": url}})).into_response())
}

fn unavailable(kind: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("Unavailable console type {kind}: {why}."))
}

/// Checks that `s` has a serial console now and issues a URL for it.
async fn serial_url(state: &AppState, s: &Server) -> Result<String, ApiError> {
    let st = state.clone();
    let server = s.clone();
    let (host, agent_url, agent_key) =
        tokio::task::spawn_blocking(move || -> Result<(String, String, String), ApiError> {
            let is_vm = st
                .store
                .get::<Image>(&server.image_ref)?
                .is_some_and(|i| i.boots_vm());
            if !is_vm {
                return Err(unavailable(
                    "serial",
                    &format!(
                        "instance {} is a container; only virtual machines have a serial port (read a container's output with `console log show`)",
                        server.id
                    ),
                ));
            }
            // Placed and running (a building one is the 409 of any
            // console read); the agent of its node answers.
            let (url, key) = super::agent_client::agent_of(&st, &server, "get_serial_console")?;
            if !matches!(server.vm_state.as_str(), vm::ACTIVE | vm::PAUSED | vm::RESCUED) {
                return Err(ApiError::conflict(format!(
                    "Instance {} is not ready: its serial console is there only while it runs (it is {}).",
                    server.id, server.vm_state
                )));
            }
            Ok((server.host.clone().unwrap_or_default(), url, key))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let token = state.compute.consoles.issue(Ticket {
        server: s.id.clone(),
        host,
        agent_url,
        agent_key,
        expires: Instant::now() + TOKEN_TTL,
    });
    Ok(format!(
        "{}/websockify?token={token}",
        ws_base(&state.config.public_url)
    ))
}

/// The public URL with the websocket scheme (`ws` for `http`, `wss` for
/// `https`).
fn ws_base(public: &str) -> String {
    let public = public.trim_end_matches('/');
    if let Some(rest) = public.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        public.to_string()
    }
}

/// `GET /os-console-auth-tokens/{token}` (admin, 2.31+ for serial).
async fn show_token(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-console-auth-tokens"));
    }
    let t = state
        .compute
        .consoles
        .peek(&token)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Token not found"))?;
    if !mv.at_least(31) {
        return Err(ApiError::bad_request(
            "The requested console type details are not accessible",
        ));
    }
    let port = t
        .agent_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    Ok(axum::Json(json!({"console": {
        "instance_uuid": t.server,
        "host": t.host,
        "port": port,
        "internal_access_path": format!("/instances/{}/serial", t.server),
    }}))
    .into_response())
}

/// `GET /websockify?token=...` (or the token in a `token=` cookie, as old
/// noVNC clients send it): the console behind an unused token.
async fn websocket(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix("token=").map(str::to_string));
    let token =
        q.get("token").cloned().or(cookie).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "A console token is required.")
        })?;
    let ticket = state.compute.consoles.take(&token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "The console token is unknown, used or expired: ask for a new console URL.",
        )
    })?;
    tracing::info!(server = %ticket.server, host = %ticket.host, "serial console joined");
    Ok(ws
        .protocols(["binary"])
        .on_upgrade(move |socket| join(socket, ticket)))
}

/// Carries the console both ways until either end closes.
async fn join(mut ws: WebSocket, t: Ticket) {
    let agent = match open_serial(&t).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(server = %t.server, error = %e, "serial console not reachable");
            let reason: String = e.chars().take(120).collect();
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: reason.into(),
                })))
                .await;
            return;
        }
    };
    let (mut from_vm, mut to_vm) = agent.into_split();
    let mut buf = vec![0u8; 4096];
    'outer: loop {
        tokio::select! {
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if to_vm.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if to_vm.write_all(t.as_bytes()).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            n = from_vm.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = ws.send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "the serial console closed".into(),
                    }))).await;
                    break;
                }
                Ok(n) => {
                    for chunk in buf[..n].chunks(FRAME_MAX) {
                        if ws.send(Message::Binary(Bytes::copy_from_slice(chunk))).await.is_err() {
                            break 'outer;
                        }
                    }
                }
            },
        }
    }
    tracing::info!(server = %t.server, "serial console left");
}

/// Asks the server's agent to join its serial port: the connection,
/// once the agent has answered 101.
async fn open_serial(t: &Ticket) -> Result<tokio::net::TcpStream, String> {
    let addr = t
        .agent_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("the agent's URL {} is not http", t.agent_url))?
        .trim_end_matches('/')
        .to_string();
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("the agent at {addr} cannot be reached: {e}"))?;
        let req = format!(
            "GET /instances/{}/serial HTTP/1.1\r\nhost: {addr}\r\nx-stratus-agent-key: {}\r\n\r\n",
            t.server, t.agent_key
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The head, a byte at a time: what follows it is the console's.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            let b = s.read_u8().await.map_err(|e| e.to_string())?;
            head.push(b);
        }
        if head.starts_with(b"HTTP/1.1 101") {
            return Ok(s);
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        Err(format!(
            "the agent refused: {} {}",
            String::from_utf8_lossy(&head).lines().next().unwrap_or(""),
            String::from_utf8_lossy(&rest).trim()
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "the agent did not answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(secs: u64) -> Ticket {
        Ticket {
            server: "s".into(),
            host: "h".into(),
            agent_url: "http://127.0.0.1:1".into(),
            agent_key: "k".into(),
            expires: Instant::now() + Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_token_opens_one_console_once_and_not_after_it_expires() {
        let t = Tokens::default();
        let a = t.issue(ticket(60));
        assert!(t.peek(&a).is_some(), "looking does not use it up");
        assert!(t.take(&a).is_some());
        assert!(t.take(&a).is_none(), "a second connection is refused");
        let b = t.issue(ticket(0));
        assert!(t.take(&b).is_none(), "an expired token opens nothing");
        assert!(t.take("made-up").is_none());
    }

    #[test]
    fn console_urls_follow_the_public_scheme() {
        assert_eq!(ws_base("http://10.0.0.1:8774/"), "ws://10.0.0.1:8774");
        assert_eq!(ws_base("https://cloud.example"), "wss://cloud.example");
    }
}
