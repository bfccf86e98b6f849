//! Calls from the controller to a node agent's own listener (console
//! output). Everything else flows from the agent to the controller.

use std::time::Duration;

use axum::http::StatusCode;

use crate::ApiError;

/// The tail of a server's console log (`length` lines, all when None).
pub fn console(
    agent_url: &str,
    key: &str,
    id: &str,
    length: Option<usize>,
) -> Result<String, ApiError> {
    let mut url = format!("{}/instances/{id}/console", agent_url.trim_end_matches('/'));
    if let Some(n) = length {
        url.push_str(&format!("?length={n}"));
    }
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let unavailable = |e: String| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("The console of instance {id} cannot be read now: {e}"),
        )
    };
    let mut resp = agent
        .get(&url)
        .header("x-stratus-agent-key", key)
        .call()
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| unavailable(e.to_string()))?;
    match status {
        200 => Ok(text),
        404 => Err(ApiError::conflict(format!(
            "Instance {id} has no console output on its node yet."
        ))),
        _ => Err(unavailable(format!("agent answered {status}: {text}"))),
    }
}
