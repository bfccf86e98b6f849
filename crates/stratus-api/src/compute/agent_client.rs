//! Calls from the controller to a node agent's own listener (console
//! output, diagnostics, getting a live migration's destination ready).
//! Everything else flows from the agent to the controller.

use std::time::Duration;

use axum::http::StatusCode;

use crate::ApiError;

/// `GET {agent_url}{path}` with the agent's key: the status and body, or a
/// 409 naming `what` when the agent cannot be reached.
fn get(agent_url: &str, key: &str, path: &str, what: &str) -> Result<(u16, String), ApiError> {
    let url = format!("{}{path}", agent_url.trim_end_matches('/'));
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let unavailable = |e: String| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("The {what} cannot be read now: {e}"),
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
    if status != 200 && status != 404 {
        return Err(unavailable(format!("agent answered {status}: {text}")));
    }
    Ok((status, text))
}

/// The tail of a server's console log (`length` lines, all when None).
pub fn console(
    agent_url: &str,
    key: &str,
    id: &str,
    length: Option<usize>,
) -> Result<String, ApiError> {
    let mut path = format!("/instances/{id}/console");
    if let Some(n) = length {
        path.push_str(&format!("?length={n}"));
    }
    match get(agent_url, key, &path, &format!("console of instance {id}"))? {
        (200, text) => Ok(text),
        _ => Err(ApiError::conflict(format!(
            "Instance {id} has no console output on its node yet."
        ))),
    }
}

/// The instance's resource use as its driver measures it.
pub fn diagnostics(agent_url: &str, key: &str, id: &str) -> Result<serde_json::Value, ApiError> {
    let what = format!("diagnostics of instance {id}");
    match get(
        agent_url,
        key,
        &format!("/instances/{id}/diagnostics"),
        &what,
    )? {
        (200, text) => serde_json::from_str(&text).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("The {what} cannot be read now: {e}"),
            )
        }),
        (_, text) => Err(ApiError::conflict(format!(
            "The {what} are not available on its node: {text}"
        ))),
    }
}

/// Pre-live-migration on the destination's agent: it builds the VM from
/// `assignment` and starts it waiting for the migration stream; the TCP
/// port it waits on.
pub fn prepare_incoming(
    agent_url: &str,
    key: &str,
    id: &str,
    assignment: &stratus_wire::Assignment,
    timeout: Duration,
) -> Result<u16, ApiError> {
    let url = format!(
        "{}/instances/{id}/incoming",
        agent_url.trim_end_matches('/')
    );
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let refused = |e: String| {
        ApiError::conflict(format!(
            "The destination could not get ready for instance {id}: {e}"
        ))
    };
    let body = serde_json::to_string(assignment).map_err(|e| refused(e.to_string()))?;
    let mut resp = agent
        .post(&url)
        .header("x-stratus-agent-key", key)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| refused(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| refused(e.to_string()))?;
    if status != 200 {
        return Err(refused(format!("its agent answered {status}: {text}")));
    }
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| refused(format!("its agent named no port: {text}")))
}

/// Where to reach the agent of the node a placed server runs on.
pub(super) fn agent_of(
    state: &crate::AppState,
    s: &super::model::Server,
    action: &str,
) -> Result<(String, String), ApiError> {
    if s.vm_state == super::states::vm::BUILDING || s.host.is_none() {
        return Err(super::states::wrong_state(action, s));
    }
    let node = state
        .store
        .get::<super::model::ComputeNode>(s.host.as_deref().unwrap_or(""))?
        .ok_or_else(|| ApiError::conflict("The server's compute node is gone."))?;
    let url = node.agent_url.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server's node agent takes no requests from the controller.",
        )
    })?;
    Ok((url, node.agent_key.unwrap_or_default()))
}

/// Where other nodes reach a node (a live migration's stream, a volume
/// export): the node's own address
/// (the one its tunnels use) when it has one other nodes can reach, else
/// the host of its agent's URL. An agent the controller reaches on
/// loopback (`stratus up`'s own) is reached by the other nodes on the
/// node's address.
pub(crate) fn stream_host(host_ip: &str, agent_url: &str) -> Option<String> {
    match host_ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) if !a.is_loopback() && !a.is_unspecified() => {
            Some(a.to_string())
        }
        Ok(std::net::IpAddr::V6(a)) if !a.is_loopback() && !a.is_unspecified() => {
            Some(format!("[{a}]"))
        }
        _ => agent_host(agent_url),
    }
}

/// The host part of an agent's URL (`http://HOST:PORT`), where its QEMU
/// listens too.
fn agent_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::{agent_host, stream_host};

    #[test]
    fn the_destination_host_comes_from_its_agent_address() {
        assert_eq!(
            agent_host("http://10.0.0.5:9101").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(agent_host("http://node-b:9101/").as_deref(), Some("node-b"));
        assert_eq!(agent_host("http://[::1]:9101").as_deref(), Some("[::1]"));
        assert_eq!(agent_host("http://:9101"), None);
        // The node's own address first, unless it is of no use elsewhere.
        assert_eq!(
            stream_host("10.0.0.7", "http://127.0.0.1:9101").as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(
            stream_host("127.0.0.1", "http://10.0.0.5:9101").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            stream_host("", "http://10.0.0.5:9101").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            stream_host("fd00::7", "http://[::1]:9101").as_deref(),
            Some("[fd00::7]")
        );
    }
}
