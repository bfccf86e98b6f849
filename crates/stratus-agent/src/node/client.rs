//! Calls to the controller: logging in (once, again on a 401) and the
//! authenticated JSON calls of the agent API.

use anyhow::Context;

use super::*;

/// The longest a login, heartbeat or report may take: a controller that
/// accepted the connection but never answers must not hold the agent for
/// the long-poll's 90 s.
pub(super) const SHORT_CALL: Duration = Duration::from_secs(20);

pub(super) fn login(sh: &Shared) -> anyhow::Result<String> {
    let c = &sh.cfg;
    let body = c.login.auth_body();
    let mut resp = sh
        .http
        .post(&format!("{}/identity/v3/auth/tokens", c.controller))
        .config()
        .timeout_global(Some(SHORT_CALL))
        .build()
        .header("content-type", "application/json")
        .send(body.to_string())
        .context("logging in to the controller")?;
    let status = resp.status().as_u16();
    let tok = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    match (status, tok) {
        (201, Some(t)) => Ok(t),
        _ => anyhow::bail!("login as {} refused ({status}): {text}", c.login.who()),
    }
}

/// One authenticated call; logs in again once on a 401.
pub(super) fn call(
    sh: &Shared,
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, String)> {
    for attempt in 0..2 {
        let token = {
            let mut t = sh.token.lock().unwrap_or_else(|e| e.into_inner());
            if t.is_none() {
                *t = Some(login(sh)?);
            }
            t.clone().expect("set above")
        };
        let mut resp = match (method, &body) {
            ("GET", _) => sh.http.get(url).header("x-auth-token", &token).call()?,
            (_, Some(b)) => {
                let req = if method == "PUT" {
                    sh.http.put(url)
                } else {
                    sh.http.post(url)
                };
                req.config()
                    .timeout_global(Some(SHORT_CALL))
                    .build()
                    .header("x-auth-token", &token)
                    .header("content-type", "application/json")
                    .send(b.clone())?
            }
            _ => anyhow::bail!("bad call"),
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 401 && attempt == 0 {
            *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            continue;
        }
        return Ok((status, text));
    }
    anyhow::bail!("not authorised by the controller")
}

/// The token for calls outside [`call`] (streamed bodies).
pub(super) fn token(sh: &Shared) -> anyhow::Result<String> {
    let mut t = sh.token.lock().unwrap_or_else(|e| e.into_inner());
    if t.is_none() {
        *t = Some(login(sh)?);
    }
    Ok(t.clone().expect("set above"))
}
