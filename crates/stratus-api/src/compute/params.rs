//! Request fields that server create and rebuild (and snapshots) parse the
//! same way: metadata, key pair, user data, trusted certificates and the
//! admin password, access addresses and tags. Turns JSON into typed values
//! with Nova's 400s. Handler layer.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::Value;

use super::Mv;
use super::common::bad_field;
use crate::ApiError;

/// Largest `user_data`, base64 (Nova's column size).
const MAX_USER_DATA: usize = 65535;

/// `key_name`: a string, or null (or absent) for none.
pub(crate) fn key_name(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(v) => Err(bad_field(
            "key_name",
            format!("Value: {v}. It is not a string"),
        )),
    }
}

/// `trusted_image_certificates` (2.63) on create and rebuild. Image
/// signature verification is not built, so a request for it is refused
/// (as Nova does when `verify_glance_signatures` is off) rather than
/// accepted and ignored.
pub(crate) fn trusted_certs(v: Option<&Value>, mv: Mv, what: &str) -> Result<(), ApiError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(_) if !mv.at_least(63) => Err(bad_field(
            what,
            "Additional properties are not allowed ('trusted_image_certificates' was unexpected)",
        )),
        Some(Value::Array(l))
            if !l.is_empty()
                && l.len() <= 50
                && l.iter().all(|c| c.as_str().is_some_and(|c| !c.is_empty())) =>
        {
            Err(ApiError::bad_request(
                "Image certificate validation failed: this cloud does not verify image signatures, so trusted_image_certificates cannot be honoured.",
            ))
        }
        Some(v) => Err(bad_field(
            "trusted_image_certificates",
            format!("Value: {v}. It must be a list of 1 to 50 certificate ids"),
        )),
    }
}

/// `user_data`: base64 of at most [`MAX_USER_DATA`] characters.
pub(crate) fn user_data(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(u)) => {
            if u.len() > MAX_USER_DATA {
                return Err(bad_field(
                    "user_data",
                    format!(
                        "The user data is {} bytes of base64; the most allowed is {MAX_USER_DATA}",
                        u.len()
                    ),
                ));
            }
            if base64::engine::general_purpose::STANDARD.decode(u).is_err() {
                return Err(bad_field(
                    "user_data",
                    "User data needs to be valid base 64.",
                ));
            }
            Ok(Some(u.clone()))
        }
        Some(v) => Err(bad_field(
            "user_data",
            format!("Value: {v}. It is not a string"),
        )),
    }
}

/// Metadata as Nova validates it: string keys 1-255, string values up to
/// 255.
pub(crate) fn parse_metadata(v: &Value, field: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let o = v
        .as_object()
        .ok_or_else(|| bad_field(field, format!("Value: {v}. {v} is not of type 'object'")))?;
    let mut out = BTreeMap::new();
    for (k, val) in o {
        if k.is_empty() || k.len() > 255 {
            return Err(bad_field(
                field,
                format!("Key '{k}' must be 1 to 255 characters"),
            ));
        }
        let s = val.as_str().ok_or_else(|| {
            bad_field(
                field,
                format!("Value: {val}. {val} is not of type 'string'"),
            )
        })?;
        if s.len() > 255 {
            return Err(bad_field(
                field,
                format!("The value of '{k}' is longer than 255 characters"),
            ));
        }
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

/// The admin password a create or rebuild answers with: the one asked
/// for, else a generated one (no guest agent sets it either way).
pub(super) fn admin_pass(body: &Value) -> String {
    match body.get("adminPass").and_then(Value::as_str) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
    }
}

/// An `accessIPv4`/`accessIPv6` value: empty or an address of that family.
pub(super) fn access_ip(v: Option<&Value>, field: &str, v6: bool) -> Result<String, ApiError> {
    let ip = v.and_then(Value::as_str).unwrap_or("");
    let ok = ip.is_empty()
        || if v6 {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            ip.parse::<std::net::Ipv4Addr>().is_ok()
        };
    if !ok {
        let family = if v6 { "IPv6" } else { "IPv4" };
        return Err(bad_field(
            field,
            format!("Value: {ip}. It is not a valid {family} address"),
        ));
    }
    // Stored as Nova does: the address's canonical text.
    Ok(if ip.is_empty() {
        String::new()
    } else if v6 {
        ip.parse::<std::net::Ipv6Addr>()
            .expect("checked")
            .to_string()
    } else {
        ip.parse::<std::net::Ipv4Addr>()
            .expect("checked")
            .to_string()
    })
}

pub(super) fn valid_tag(t: &str) -> bool {
    !t.is_empty() && t.len() <= 60 && !t.contains(',') && !t.contains('/')
}
