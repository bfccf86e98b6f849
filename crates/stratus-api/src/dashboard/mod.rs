//! The web dashboard under `/dashboard`: one page of HTML, CSS and
//! JavaScript embedded in the binary, a server-side session bound to a
//! Keystone token, and a same-origin proxy through which the page calls
//! the real APIs.
//!
//! - `GET /dashboard` (and `GET /` from a browser, see [`wants_html`]): the
//!   page. Every dashboard answer carries a Content-Security-Policy that
//!   allows only this origin's own script and style files.
//! - `GET /dashboard/session`: who is logged in (and the session's CSRF
//!   token), or a 401 with a fresh login CSRF token whose twin is set in a
//!   cookie (a double-submit pair: the login form has no session yet).
//! - `POST /dashboard/login`: authenticates through the real
//!   `POST /identity/v3/auth/tokens`, dispatched in-process; any failure is
//!   the one message "Invalid credentials". On success a random session id
//!   goes in an `HttpOnly; SameSite=Strict; Path=/dashboard` cookie
//!   (`Secure` when the public URL is https); the session (token, CSRF
//!   token, expiry) stays in this process's memory.
//! - `POST /dashboard/project`: rescopes the session's token to another
//!   project. `POST /dashboard/logout`: revokes the token, ends the session.
//! - `/dashboard/api/{service path}`: any method; needs the session cookie
//!   and an `X-CSRF-Token` header equal to the session's CSRF token. The
//!   request is dispatched into the API router with the session's
//!   `X-Auth-Token`, so policy is exactly the API's.
//!
//! Tokens never appear in a URL, a page or a log line: the page only ever
//! sees the session cookie (which scripts cannot read) and the CSRF token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

const SESSION_COOKIE: &str = "stratus_session";
const LOGIN_COOKIE: &str = "stratus_login_csrf";
const CSRF_HEADER: &str = "x-csrf-token";
/// The policy on every dashboard answer: this origin's files only, no
/// inline script or style, no plugins, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// The most bytes of an in-process answer the dashboard reads itself.
const READ_LIMIT: usize = 16 << 20;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
/// The block storage pages, built on the kit `app.js` exports.
const VOLUMES_JS: &str = include_str!("static/volumes.js");
const APP_CSS: &str = include_str!("static/app.css");
const FAVICON: &str = include_str!("static/favicon.svg");

/// The dashboard's routes, with their own state; merged into the public
/// router by [`crate::router`].
pub fn router<S: Clone + Send + Sync + 'static>(app: AppState) -> Router<S> {
    let secure = app.config.public_url.starts_with("https://");
    let dash = Dash(Arc::new(DashInner {
        app,
        sessions: Mutex::new(HashMap::new()),
        api: OnceLock::new(),
        secure,
    }));
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/static/{file}", get(asset))
        .route("/dashboard/session", get(session_info))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/project", post(switch_project))
        .route("/dashboard/api/{*path}", any(proxy))
        .with_state(dash)
}

/// Whether a `GET /` came from a browser (it accepts HTML), which is sent
/// on to the dashboard; API clients keep the JSON document.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The answer to a browser's `GET /`.
pub fn redirect_to_dashboard() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response()
}

#[derive(Clone)]
struct Dash(Arc<DashInner>);

struct DashInner {
    app: AppState,
    sessions: Mutex<HashMap<String, Session>>,
    /// The API router requests are dispatched into, built on first use.
    api: OnceLock<Router>,
    /// Whether cookies get `Secure` (the public URL is https).
    secure: bool,
}

/// One logged-in browser.
struct Session {
    token: String,
    csrf: String,
    expires: Instant,
    /// What the page is told about the login (user, project, roles...).
    info: Value,
}

impl Dash {
    fn api(&self) -> Router {
        self.0
            .api
            .get_or_init(|| crate::router(self.0.app.clone()))
            .clone()
    }

    /// Dispatches `req` into the API router in-process.
    async fn dispatch(&self, req: Request) -> Response {
        match TowerToHyperService::new(self.api()).call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// An in-process JSON call; its status, headers and body (Null when
    /// the body is empty or not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("x-auth-token", t);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let Ok(req) = b.body(body) else {
            return (StatusCode::BAD_REQUEST, HeaderMap::new(), Value::Null);
        };
        let resp = self.dispatch(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, READ_LIMIT)
            .await
            .unwrap_or_default();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, v)
    }

    /// Issues a token for `auth` (a Keystone `auth` object); the token and
    /// its body, or None for any failure.
    async fn issue(&self, auth: Value) -> Option<(String, Value)> {
        let (status, headers, body) = self
            .call(
                Method::POST,
                "/identity/v3/auth/tokens?nocatalog",
                None,
                &[],
                Some(json!({ "auth": auth })),
            )
            .await;
        if status != StatusCode::CREATED {
            return None;
        }
        let token = headers.get("x-subject-token")?.to_str().ok()?.to_string();
        Some((token, body))
    }

    async fn revoke(&self, token: &str) {
        let (status, _, _) = self
            .call(
                Method::DELETE,
                "/identity/v3/auth/tokens",
                Some(token),
                &[("x-subject-token", token)],
                None,
            )
            .await;
        if !status.is_success() {
            tracing::debug!(
                status = status.as_u16(),
                "revoking a dashboard token failed"
            );
        }
    }

    /// The projects `token`'s user may scope to, by name.
    async fn projects(&self, token: &str) -> Vec<Value> {
        let (_, _, body) = self
            .call(
                Method::GET,
                "/identity/v3/auth/projects",
                Some(token),
                &[],
                None,
            )
            .await;
        let mut out: Vec<Value> = body["projects"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["enabled"] != false)
                    .map(|p| json!({"id": p["id"], "name": p["name"]}))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    /// Rescopes `token` to project `project_id`.
    async fn rescope(&self, token: &str, project_id: &str) -> Option<(String, Value)> {
        self.issue(json!({
            "identity": {"methods": ["token"], "token": {"id": token}},
            "scope": {"project": {"id": project_id}}
        }))
        .await
    }

    /// Builds the session for a token (and its body) and stores it; its id
    /// and what the page is told.
    async fn open(&self, token: String, body: &Value) -> (String, Value) {
        let t = &body["token"];
        let roles: Vec<Value> = t["roles"]
            .as_array()
            .map(|a| a.iter().map(|r| r["name"].clone()).collect())
            .unwrap_or_default();
        let admin = roles.iter().any(|r| r == "admin");
        let projects = self.projects(&token).await;
        let csrf = random_token();
        let info = json!({
            "user": {"id": t["user"]["id"], "name": t["user"]["name"],
                     "domain": t["user"]["domain"]["name"]},
            "project": t.get("project").map(|p| json!({"id": p["id"], "name": p["name"]})),
            "roles": roles,
            "admin": admin,
            "projects": projects,
            "application_credential": t.get("application_credential").is_some(),
            "expires_at": t["expires_at"],
        });
        let lifetime = Duration::from_secs(self.0.app.config.token_expiration_s.max(60));
        let id = random_token();
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                expires: now + lifetime,
                info: info.clone(),
            },
        );
        let mut out = info;
        out["csrf"] = json!(csrf);
        (id, out)
    }

    /// The session the request's cookie names, if live: (id, token, csrf,
    /// info).
    fn session(&self, headers: &HeaderMap) -> Option<(String, String, String, Value)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let s = sessions.get(&id)?;
        if s.expires <= Instant::now() {
            sessions.remove(&id);
            return None;
        }
        Some((id, s.token.clone(), s.csrf.clone(), s.info.clone()))
    }

    /// The session, when the request also carries its CSRF token.
    fn checked(&self, headers: &HeaderMap) -> Result<(String, String, Value), ApiError> {
        let Some((id, token, csrf, info)) = self.session(headers) else {
            return Err(ApiError::unauthorized_msg(
                "The dashboard session is missing or has expired: log in again.",
            ));
        };
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(given, &csrf) {
            return Err(csrf_refused());
        }
        Ok((id, token, info))
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/dashboard");
        if let Some(s) = max_age {
            c.push_str(&format!("; Max-Age={s}"));
        }
        if self.0.secure {
            c.push_str("; Secure");
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "The request has no valid CSRF token (X-CSRF-Token).",
    )
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    crate::identity::fernet::fill_random(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_string())
        })
}

/// Adds the dashboard's security headers to an answer.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn page() -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response(),
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    let (ct, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "volumes.js" => ("text/javascript; charset=utf-8", VOLUMES_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => ("image/svg+xml", FAVICON),
        _ => return secured(ApiError::not_found("file", &file).into_response()),
    };
    secured(
        (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
    )
}

async fn session_info(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    if let Some((_, _, csrf, mut info)) = dash.session(&headers) {
        info["csrf"] = json!(csrf);
        return secured(axum::Json(info).into_response());
    }
    // Not logged in: a login CSRF pair, one half in a cookie.
    let login_csrf = random_token();
    let err = ApiError::unauthorized_msg("Not logged in.");
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({
            "error": {"code": 401, "title": "Unauthorized", "message": err.message},
            "login_csrf": login_csrf,
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        dash.cookie(LOGIN_COOKIE, &login_csrf, None),
    );
    secured(resp)
}

/// What the login form posts.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    username: String,
    password: String,
    domain: String,
    project: String,
    application_credential_id: String,
    application_credential_secret: String,
}

fn invalid_credentials() -> Response {
    secured(ApiError::unauthorized_msg("Invalid credentials").into_response())
}

async fn login(State(dash): State<Dash>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same(given, &expected) {
        return secured(csrf_refused().into_response());
    }
    let Ok(form) = serde_json::from_slice::<LoginForm>(&body) else {
        return secured(ApiError::bad_request("The login form is malformed.").into_response());
    };
    let auth = if !form.application_credential_id.is_empty() {
        json!({"identity": {"methods": ["application_credential"],
            "application_credential": {"id": form.application_credential_id,
                                       "secret": form.application_credential_secret}}})
    } else {
        let domain = if form.domain.trim().is_empty() {
            "Default"
        } else {
            form.domain.trim()
        };
        let mut a = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": form.username, "domain": {"name": domain}, "password": form.password}}}});
        if !form.project.trim().is_empty() {
            a["scope"] =
                json!({"project": {"name": form.project.trim(), "domain": {"name": domain}}});
        }
        a
    };
    let Some((mut token, mut body)) = dash.issue(auth).await else {
        return invalid_credentials();
    };
    // Unscoped: scope to the first project the user has, as Horizon does.
    if body["token"].get("project").is_none()
        && body["token"].get("domain").is_none()
        && let Some(first) = dash.projects(&token).await.first()
        && let Some(pid) = first["id"].as_str()
        && let Some((t, b)) = dash.rescope(&token, pid).await
    {
        dash.revoke(&token).await;
        token = t;
        body = b;
    }
    let (id, info) = dash.open(token, &body).await;
    let mut resp = axum::Json(info).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, dash.cookie(SESSION_COOKIE, &id, None));
    h.append(header::SET_COOKIE, dash.cookie(LOGIN_COOKIE, "", Some(0)));
    secured(resp)
}

async fn logout(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    let (id, token, _) = match dash.checked(&headers) {
        Ok(s) => s,
        Err(e) => return secured(e.into_response()),
    };
    dash.0
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    dash.revoke(&token).await;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, dash.cookie(SESSION_COOKIE, "", Some(0)));
    secured(resp)
}

#[derive(Deserialize)]
struct SwitchForm {
    project_id: String,
}

async fn switch_project(
    State(dash): State<Dash>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (id, token, _) = match dash.checked(&headers) {
        Ok(s) => s,
        Err(e) => return secured(e.into_response()),
    };
    let Ok(form) = serde_json::from_slice::<SwitchForm>(&body) else {
        return secured(ApiError::bad_request("project_id is required.").into_response());
    };
    let Some((new_token, body)) = dash.rescope(&token, &form.project_id).await else {
        return secured(
            ApiError::forbidden("switch to this project (no role on it)").into_response(),
        );
    };
    dash.0
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    dash.revoke(&token).await;
    let (new_id, info) = dash.open(new_token, &body).await;
    let mut resp = axum::Json(info).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        dash.cookie(SESSION_COOKIE, &new_id, None),
    );
    secured(resp)
}

/// Request headers the proxy passes on to the API.
const PASSED: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCEPT,
    header::TRANSFER_ENCODING,
];

async fn proxy(State(dash): State<Dash>, req: Request) -> Response {
    let (_, token, _) = match dash.checked(req.headers()) {
        Ok(s) => s,
        Err(e) => return secured(e.into_response()),
    };
    // The path as sent (still percent-encoded), less the proxy's prefix.
    let path = req
        .uri()
        .path()
        .strip_prefix("/dashboard/api")
        .unwrap_or("")
        .to_string();
    let dot_segment = path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    if dot_segment {
        return secured(ApiError::bad_request("The path has a dot segment.").into_response());
    }
    // Only the OpenStack services and the edge sites' admin API; never
    // back into the dashboard or the agents' internal API.
    let service = path.split('/').nth(1).unwrap_or("");
    let sites = path == "/edge/v1/sites" || path.starts_with("/edge/v1/sites/");
    if !sites
        && !matches!(
            service,
            "identity" | "compute" | "image" | "placement" | "network" | "volume"
        )
    {
        return secured(ApiError::not_found("service", service).into_response());
    }
    let (parts, body) = req.into_parts();
    let mut uri = path;
    if let Some(q) = parts.uri.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let mut b = Request::builder().method(parts.method.clone()).uri(uri);
    for (k, v) in &parts.headers {
        let name = k.as_str();
        if PASSED.contains(k) || name == "openstack-api-version" || name.starts_with("x-openstack-")
        {
            b = b.header(k, v);
        }
    }
    b = b.header("x-auth-token", token.as_str());
    let Ok(inner) = b.body(body) else {
        return secured(ApiError::bad_request("The request cannot be forwarded.").into_response());
    };
    let mut resp = dash.dispatch(inner).await;
    // Tokens stay on the server.
    resp.headers_mut().remove("x-subject-token");
    secured(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_secrets() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; stratus_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("", ""));
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn browsers_are_sent_to_the_dashboard() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_html(&h));
    }
}
