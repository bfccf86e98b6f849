//! A server's networks, Nova side: the `networks` of a create request and
//! how the network service's errors read in Nova's words.

use axum::http::StatusCode;
use serde_json::Value;

use crate::ApiError;
use crate::network::NetError;
use crate::network::nova::{NicRequest, Requested};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Parses `server.networks`: `"auto"`, `"none"`, or a list of `{uuid,
/// port, fixed_ip, tag}` (the shape is checked earlier for 2.37 and
/// later). Absent means `auto`, as Nova does with one usable network.
pub fn parse(v: Option<&Value>, max_count: u32) -> Result<Requested, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Requested::Auto { allocate: false }),
        Some(Value::String(s)) if s == "auto" => return Ok(Requested::Auto { allocate: true }),
        Some(Value::String(s)) if s == "none" => return Ok(Requested::Nothing),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute networks. Value: {other}. It is not one of 'auto', 'none' or a list of networks"
            )));
        }
    };
    let mut out = Vec::new();
    for item in list {
        let Some(m) = item.as_object() else {
            return Err(bad(format!(
                "Invalid input for field/attribute networks. Value: {item}. It is not an object"
            )));
        };
        for k in m.keys() {
            if !matches!(k.as_str(), "uuid" | "port" | "fixed_ip" | "tag") {
                return Err(bad(format!(
                    "Invalid input for field/attribute networks. Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
        }
        let s = |k: &str| -> Result<Option<String>, ApiError> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(v) => Err(bad(format!(
                    "Invalid input for field/attribute {k}. Value: {v}. It is not a valid value"
                ))),
            }
        };
        let r = NicRequest {
            network_id: s("uuid")?,
            port_id: s("port")?,
            fixed_ip: s("fixed_ip")?,
        };
        if let Some(ip) = &r.fixed_ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(bad(format!("Invalid fixed IP address ({ip})")));
        }
        if r.port_id.is_some() && max_count > 1 {
            return Err(bad(
                "Unable to launch multiple instances with a single configured port ID. Please launch your instance one by one with different ports.",
            ));
        }
        if r.port_id.is_none() && r.network_id.is_none() {
            return Err(bad(
                "Bad networks format: network uuid is not in proper format (None)",
            ));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Ok(Requested::Nothing);
    }
    Ok(Requested::List(out))
}

/// Parses `server.security_groups` (`[{"name": ...}]`); `None` when
/// absent (the ports get the project's default group).
pub fn parse_groups(v: Option<&Value>) -> Result<Option<Vec<String>>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(l)) => l,
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute security_groups. Value: {other}. It is not of type 'array'"
            )));
        }
    };
    let mut out = Vec::new();
    for g in list {
        match g.get("name") {
            Some(Value::String(n)) if !n.is_empty() && n.len() <= 255 => out.push(n.clone()),
            _ => {
                return Err(bad(format!(
                    "Invalid input for field/attribute security_groups. Value: {g}. 'name' is a required property"
                )));
            }
        }
    }
    Ok(Some(out))
}

/// The network service's refusal as Nova words it: an unknown network or
/// port is the request's fault (400), an address or port in use a
/// conflict (409), an exhausted network 409 as well.
pub fn nova_error(e: NetError) -> ApiError {
    match e.kind {
        "NetworkNotFound" => ApiError::bad_request(e.message),
        "PortNotFound" => ApiError::bad_request(e.message),
        "SecurityGroupNotFound" => ApiError::bad_request(e.message),
        "OverQuota" => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Maximum number of ports exceeded: {}", e.message),
        ),
        _ if e.status == StatusCode::NOT_FOUND => ApiError::bad_request(e.message),
        _ => ApiError::new(e.status, e.message),
    }
}
