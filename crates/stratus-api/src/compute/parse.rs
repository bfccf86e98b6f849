//! Request bodies into typed commands (`commands.rs`): server create and
//! each server action, with Nova's 400s and the request's microversion
//! applied (fields a version does not know are refused here, so the core
//! never sees a microversion). Handler layer: used by `servers.rs` and
//! `actions.rs`, never by the core.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::Mv;
use super::commands::{CreateServer, ImageRequest, Rebuild, ResetTo, ServerAction};
use super::common::bad_field;
use super::params::{access_ip, key_name, parse_metadata, trusted_certs, user_data, valid_tag};
use super::policy_denied;
use crate::ApiError;
use crate::identity::policy::Ctx;

/// The `locked_reason` of a 2.73 `lock` body (null or an object).
fn lock_reason(arg: &Value) -> Result<Option<String>, ApiError> {
    let bad = |why: String| {
        ApiError::bad_request(format!("Invalid input for field/attribute lock. {why}"))
    };
    match arg {
        Value::Null => Ok(None),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "locked_reason") {
                return Err(bad(format!(
                    "Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
            match o.get("locked_reason") {
                None => Ok(None),
                Some(Value::String(r)) if !r.is_empty() && r.chars().count() <= 255 => {
                    Ok(Some(r.clone()))
                }
                Some(v) => Err(bad(format!(
                    "Value: {v}. locked_reason must be a string of 1-255 characters"
                ))),
            }
        }
        v => Err(bad(format!(
            "Value: {v}. It is not of type 'object', 'null'"
        ))),
    }
}

/// A `rescue` body: null, or an object with `adminPass` and
/// `rescue_image_ref`.
fn rescue(arg: &Value) -> Result<ServerAction, ApiError> {
    let o = match arg {
        Value::Null => {
            return Ok(ServerAction::Rescue {
                admin_pass: None,
                image_ref: None,
            });
        }
        Value::Object(o) => o,
        v => {
            return Err(bad_field(
                "rescue",
                format!("Value: {v}. {v} is not of type 'object', 'null'"),
            ));
        }
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["adminPass", "rescue_image_ref"].contains(&k.as_str()))
    {
        return Err(bad_field(
            "rescue",
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    let admin_pass = match o.get("adminPass") {
        None => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(v) => {
            return Err(bad_field(
                "adminPass",
                format!("Value: {v}. {v} is not of type 'string'"),
            ));
        }
    };
    let image = match o.get("rescue_image_ref") {
        None => None,
        Some(Value::String(r)) if uuid::Uuid::parse_str(r).is_ok() => Some(r.clone()),
        Some(v) => {
            return Err(bad_field(
                "rescue_image_ref",
                format!("Value: {v}. {v} is not a 'uuid'"),
            ));
        }
    };
    Ok(ServerAction::Rescue {
        admin_pass,
        image_ref: image,
    })
}

fn only_keys(action: &str, o: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad_field(
            action,
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    Ok(())
}

/// A `createImage` or (with `backup`) `createBackup` body.
fn image_request(action: &str, arg: &Value, backup: bool) -> Result<ImageRequest, ApiError> {
    let o = arg.as_object().ok_or_else(|| {
        bad_field(
            action,
            format!("Value: {arg}. {arg} is not of type 'object'"),
        )
    })?;
    let required: &[&str] = if backup {
        &["name", "backup_type", "rotation"]
    } else {
        &["name"]
    };
    for k in required {
        if !o.contains_key(*k) {
            return Err(bad_field(action, format!("'{k}' is a required property")));
        }
    }
    if backup {
        only_keys(action, o, &["name", "backup_type", "rotation", "metadata"])?;
    } else {
        only_keys(action, o, &["name", "metadata"])?;
    }
    let name = super::validation::name("name", &o["name"])?;
    let metadata = match o.get("metadata") {
        None => BTreeMap::new(),
        Some(m) => parse_metadata(m, "metadata")?,
    };
    let backup = if backup {
        let kind = match &o["backup_type"] {
            Value::String(t) => t.clone(),
            v => {
                return Err(bad_field(
                    "backup_type",
                    format!("Value: {v}. {v} is not of type 'string'"),
                ));
            }
        };
        let r = &o["rotation"];
        let rotation = r
            .as_u64()
            .or_else(|| r.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| *n <= u32::MAX as u64)
            .ok_or_else(|| {
                bad_field(
                    "rotation",
                    format!("Value: {r}. It must be an integer of at least 0"),
                )
            })?;
        Some((kind, rotation as u32))
    } else {
        None
    };
    Ok(ImageRequest {
        name,
        metadata,
        backup,
    })
}

/// The flavor a `resize` body names.
fn resize(arg: &Value) -> Result<String, ApiError> {
    let o = arg.as_object().ok_or_else(|| {
        bad_field(
            "resize",
            format!("Value: {arg}. It is not of type 'object'"),
        )
    })?;
    if let Some(k) = o
        .keys()
        .find(|k| !["flavorRef", "OS-DCF:diskConfig"].contains(&k.as_str()))
    {
        return Err(bad_field(
            "resize",
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    if let Some(d) = o.get("OS-DCF:diskConfig")
        && !matches!(d.as_str(), Some("AUTO" | "MANUAL"))
    {
        return Err(bad_field(
            "OS-DCF:diskConfig",
            format!("Value: {d}. It is not one of ['AUTO', 'MANUAL']"),
        ));
    }
    match o.get("flavorRef") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => {
            Ok(s.rsplit('/').next().unwrap_or(s).to_string())
        }
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.to_string()),
        Some(v) => Err(bad_field(
            "flavorRef",
            format!("Value: {v}. It is not a valid flavor reference"),
        )),
        None => Err(bad_field("flavorRef", "'flavorRef' is a required property")),
    }
}

/// The body of the server action `name` as a command, or `None` for a
/// name that is no command (the handler answers those itself).
pub fn action(name: &str, arg: &Value, mv: Mv) -> Result<Option<ServerAction>, ApiError> {
    Ok(Some(match name {
        "os-stop" => ServerAction::Stop,
        "os-start" => ServerAction::Start,
        "reboot" => reboot(arg)?,
        "pause" => ServerAction::Pause,
        "unpause" => ServerAction::Unpause,
        "suspend" => ServerAction::Suspend,
        "resume" => ServerAction::Resume,
        // 2.73: an optional reason.
        "lock" => ServerAction::Lock {
            reason: if mv.at_least(73) {
                lock_reason(arg)?
            } else {
                None
            },
        },
        "unlock" => ServerAction::Unlock,
        "rebuild" => ServerAction::Rebuild(rebuild(arg, mv)?),
        "os-resetState" => ServerAction::ResetState(reset_state(arg)?),
        "addFloatingIp" => {
            let (address, fixed_address) = floating(arg)?;
            ServerAction::AddFloatingIp {
                address,
                fixed_address,
            }
        }
        "removeFloatingIp" => ServerAction::RemoveFloatingIp {
            address: floating(arg)?.0,
        },
        "addSecurityGroup" => ServerAction::AddSecurityGroup {
            name: group_name(arg)?,
        },
        "removeSecurityGroup" => ServerAction::RemoveSecurityGroup {
            name: group_name(arg)?,
        },
        "resize" => ServerAction::Resize {
            flavor_ref: resize(arg)?,
        },
        "confirmResize" => ServerAction::ConfirmResize,
        "migrate" => ServerAction::Migrate {
            host: migrate(arg, mv)?,
        },
        "os-migrateLive" => ServerAction::LiveMigrate {
            host: live_migrate(arg, mv)?,
        },
        "revertResize" => ServerAction::RevertResize,
        // Nova takes any body for shelve (Tempest sends `{}`).
        "shelve" => ServerAction::Shelve,
        "shelveOffload" => ServerAction::ShelveOffload,
        "unshelve" => ServerAction::Unshelve {
            availability_zone: unshelve(arg, mv)?,
        },
        "rescue" => rescue(arg)?,
        "unrescue" => ServerAction::Unrescue,
        "createImage" => ServerAction::CreateImage(image_request("createImage", arg, false)?),
        "createBackup" => ServerAction::CreateBackup(image_request("createBackup", arg, true)?),
        "evacuate" => evacuate(arg, mv)?,
        _ => return Ok(None),
    }))
}

/// `reboot`: `type` SOFT or HARD, in any case.
fn reboot(arg: &Value) -> Result<ServerAction, ApiError> {
    let kind = arg
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute reboot. 'type' is a required property",
            )
        })?;
    match kind.as_str() {
        "SOFT" => Ok(ServerAction::Reboot { hard: false }),
        "HARD" => Ok(ServerAction::Reboot { hard: true }),
        other => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute type. Value: {other}. '{other}' is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']"
        ))),
    }
}

/// `os-resetState`: `state` active or error.
fn reset_state(arg: &Value) -> Result<ResetTo, ApiError> {
    match arg.get("state").and_then(Value::as_str) {
        Some("active") => Ok(ResetTo::Active),
        Some("error") => Ok(ResetTo::Error),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute state. Value: {}. It is not one of ['active', 'error']",
            arg.get("state").unwrap_or(&Value::Null)
        ))),
    }
}

/// `addFloatingIp`/`removeFloatingIp`: the address (and the fixed one).
fn floating(arg: &Value) -> Result<(String, Option<String>), ApiError> {
    let address = arg
        .get("address")
        .and_then(Value::as_str)
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute address. 'address' is a required property and must be an IP address",
            )
        })?
        .to_string();
    let fixed = arg
        .get("fixed_address")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((address, fixed))
}

/// `addSecurityGroup`/`removeSecurityGroup`: the group's name.
fn group_name(arg: &Value) -> Result<String, ApiError> {
    Ok(arg
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute name. 'name' is a required property",
            )
        })?
        .to_string())
}

/// `evacuate`: an optional `host` and `adminPass`; before 2.14 the
/// required `onSharedStorage` (this cloud has none), from 2.29 to 2.67
/// `force` (the host is always checked by the scheduler here).
fn evacuate(arg: &Value, mv: Mv) -> Result<ServerAction, ApiError> {
    let Value::Object(o) = arg else {
        return Err(bad_field(
            "evacuate",
            format!("Value: {arg}. It is not of type 'object'"),
        ));
    };
    let allowed = |k: &str| match k {
        "host" | "adminPass" => true,
        "onSharedStorage" => !mv.at_least(14),
        "force" => mv.at_least(29) && !mv.at_least(68),
        _ => false,
    };
    if let Some(k) = o.keys().find(|k| !allowed(k)) {
        return Err(bad_field(
            "evacuate",
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    if !mv.at_least(14) {
        match o.get("onSharedStorage") {
            None => {
                return Err(bad_field(
                    "evacuate",
                    "'onSharedStorage' is a required property",
                ));
            }
            Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(ApiError::bad_request(
                    "This cloud has no shared storage: evacuate with onSharedStorage false (the server is rebuilt from its image).",
                ));
            }
            Some(v) => {
                return Err(bad_field(
                    "onSharedStorage",
                    format!("Value: {v}. It is not of type 'boolean'"),
                ));
            }
        }
    }
    if let Some(v) = o.get("force").filter(|v| !v.is_boolean()) {
        return Err(bad_field(
            "force",
            format!("Value: {v}. It is not of type 'boolean'"),
        ));
    }
    let host = match o.get("host") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) if !h.is_empty() && h.len() <= 255 => Some(h.clone()),
        Some(v) => {
            return Err(bad_field(
                "host",
                format!("Value: {v}. It is not a valid host name"),
            ));
        }
    };
    let admin_pass = match o.get("adminPass") {
        None => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(v) => {
            return Err(bad_field(
                "adminPass",
                format!("Value: {v}. It is not of type 'string'"),
            ));
        }
    };
    Ok(ServerAction::Evacuate { host, admin_pass })
}

/// `migrate`: from 2.56 an optional `host`.
fn migrate(arg: &Value, mv: Mv) -> Result<Option<String>, ApiError> {
    // Before 2.56 Nova reads nothing from the body (Tempest sends {}).
    if !mv.at_least(56) {
        return Ok(None);
    }
    only_name("migrate", arg, "host", true, "It is not a valid host name")
}

/// `os-migrateLive`: `host` (a name or null) and `block_migration` are
/// required (a boolean, or from 2.25 `auto`); `disk_over_commit` before
/// 2.25 and `force` from 2.30 to 2.67 are taken and change nothing (there
/// is no shared storage, so every live migration is a block migration).
fn live_migrate(arg: &Value, mv: Mv) -> Result<Option<String>, ApiError> {
    let Value::Object(o) = arg else {
        return Err(bad_field(
            "os-migrateLive",
            format!("Value: {arg}. It is not of type 'object'"),
        ));
    };
    let mut known = vec!["host", "block_migration"];
    if !mv.at_least(25) {
        known.push("disk_over_commit");
    }
    if mv.at_least(30) && !mv.at_least(68) {
        known.push("force");
    }
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad_field(
            "os-migrateLive",
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        ));
    }
    for k in ["host", "block_migration"] {
        if !o.contains_key(k) {
            return Err(bad_field(k, format!("'{k}' is a required property")));
        }
    }
    match &o["block_migration"] {
        Value::Bool(_) => {}
        Value::String(s) if s == "auto" && mv.at_least(25) => {}
        v => {
            return Err(bad_field(
                "block_migration",
                format!("Value: {v}. It is not a valid boolean"),
            ));
        }
    }
    if let Some(f) = o.get("force")
        && !f.is_boolean()
    {
        return Err(bad_field(
            "force",
            format!("Value: {f}. It is not a valid boolean"),
        ));
    }
    match &o["host"] {
        Value::Null => Ok(None),
        Value::String(h) if !h.is_empty() && h.len() <= 255 => Ok(Some(h.clone())),
        v => Err(bad_field(
            "host",
            format!("Value: {v}. It is not a valid host name"),
        )),
    }
}

/// `unshelve`: before 2.77 Nova reads nothing from the body; 2.77 may
/// name a zone.
fn unshelve(arg: &Value, mv: Mv) -> Result<Option<String>, ApiError> {
    if !mv.at_least(77) {
        return Ok(None);
    }
    only_name(
        "unshelve",
        arg,
        "availability_zone",
        false,
        "It is not a valid zone name",
    )
}

/// A body that is null or an object with at most `key`, a name of 1 to
/// 255 characters (or null, when `null_ok`).
fn only_name(
    action: &str,
    arg: &Value,
    key: &str,
    null_ok: bool,
    invalid: &str,
) -> Result<Option<String>, ApiError> {
    Ok(match arg {
        Value::Null => None,
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != key) {
                return Err(bad_field(
                    action,
                    format!("Additional properties are not allowed ('{k}' was unexpected)"),
                ));
            }
            match o.get(key) {
                None => None,
                Some(Value::Null) if null_ok => None,
                Some(Value::String(h)) if !h.is_empty() && h.len() <= 255 => Some(h.clone()),
                Some(v) => return Err(bad_field(key, format!("Value: {v}. {invalid}"))),
            }
        }
        v => {
            return Err(bad_field(
                action,
                format!("Value: {v}. It is not of type 'object', 'null'"),
            ));
        }
    })
}

/// `rebuild`: `imageRef` and what else the microversion lets change.
fn rebuild(arg: &Value, mv: Mv) -> Result<Rebuild, ApiError> {
    let image_ref = arg
        .get("imageRef")
        .and_then(Value::as_str)
        .map(|r| r.rsplit('/').next().unwrap_or(r).to_string())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute rebuild. 'imageRef' is a required property",
            )
        })?;
    // 2.54: a new key pair (null removes it); 2.57: new user data.
    let key_name = match arg.get("key_name") {
        None => None,
        Some(_) if !mv.at_least(54) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute rebuild. Additional properties are not allowed ('key_name' was unexpected)",
            ));
        }
        Some(v) => Some(super::params::key_name(Some(v))?),
    };
    let user_data = match arg.get("user_data") {
        None => None,
        Some(_) if !mv.at_least(57) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute rebuild. Additional properties are not allowed ('user_data' was unexpected)",
            ));
        }
        Some(v) => Some(user_data(Some(v))?),
    };
    trusted_certs(arg.get("trusted_image_certificates"), mv, "rebuild")?;
    if arg.get("personality").is_some() && mv.at_least(57) {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute rebuild. Additional properties are not allowed ('personality' was unexpected)",
        ));
    }
    let name = match arg.get("name") {
        None => None,
        Some(v) => Some(super::validation::name("name", v)?),
    };
    let metadata = match arg.get("metadata") {
        None => None,
        Some(m) => Some(parse_metadata(m, "metadata")?),
    };
    let description = match arg.get("description") {
        None => None,
        Some(_) if !mv.at_least(19) => {
            return Err(ApiError::bad_request(
                "Invalid input for field/attribute rebuild. Additional properties are not allowed ('description' was unexpected)",
            ));
        }
        Some(Value::Null) => Some(None),
        Some(Value::String(d)) if d.len() <= 255 => Some(Some(d.clone())),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute description. Value: {v}."
            )));
        }
    };
    Ok(Rebuild {
        image_ref,
        name,
        metadata,
        description,
        key_name,
        user_data,
    })
}

/// A server create body (`{"server": {...}, "os:scheduler_hints": ...}`)
/// as a [`CreateServer`]; `ctx` for the fields only admins may send.
pub fn create(b: &Value, mv: Mv, ctx: &Ctx) -> Result<CreateServer, ApiError> {
    let o = b
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_field("server", "'server' is a required property"))?;
    let name = o
        .get("name")
        .ok_or_else(|| bad_field("server", "'name' is a required property"))?;
    let name = &super::validation::name("name", name)?;
    // flavor
    let flavor_ref = match o.get("flavorRef") {
        Some(Value::String(s)) if !s.is_empty() => s.rsplit('/').next().unwrap_or(s).to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad_field("flavorRef", "'flavorRef' is a required property")),
    };
    // image
    let image_ref = match o.get("imageRef") {
        Some(Value::String(s)) => s.rsplit('/').next().unwrap_or(s).to_string(),
        None => String::new(),
        Some(v) => {
            return Err(bad_field(
                "imageRef",
                format!("Value: {v}. It is not a string"),
            ));
        }
    };
    // Block devices: the image-backed local root disk (what the CLI sends
    // with --image), blank local disks, and volumes.
    let mut image_ref = image_ref;
    let volumes = block_devices(o)?;
    let boots_from_volume = volumes.iter().any(|v| v.boot_index == Some(0));
    if let Some(list) = o.get("block_device_mapping_v2").and_then(Value::as_array) {
        for b in list {
            let src = b.get("source_type").and_then(Value::as_str).unwrap_or("");
            let dst = b
                .get("destination_type")
                .and_then(Value::as_str)
                .unwrap_or("local");
            if (src, dst) == ("image", "local")
                && image_ref.is_empty()
                && let Some(u) = b.get("uuid").and_then(Value::as_str)
            {
                image_ref = u.to_string();
            }
        }
    }
    if boots_from_volume {
        // The root disk is a volume: the server has no image of its own
        // (Nova shows `"image": ""`).
        image_ref.clear();
    } else if image_ref.is_empty() {
        return Err(bad_field(
            "imageRef",
            "An image is required to boot a server.",
        ));
    }
    if !boots_from_volume && uuid::Uuid::parse_str(&image_ref).is_err() {
        return Err(ApiError::bad_request(format!(
            "Invalid imageRef provided: {image_ref} is not a UUID."
        )));
    }
    let key_name = key_name(o.get("key_name"))?;
    let user_data = user_data(o.get("user_data"))?;
    trusted_certs(o.get("trusted_image_certificates"), mv, "server")?;
    if o.contains_key("personality") && mv.at_least(57) {
        return Err(bad_field(
            "server",
            "Additional properties are not allowed ('personality' was unexpected)",
        ));
    }
    let metadata = match o.get("metadata") {
        None => BTreeMap::new(),
        Some(v) => parse_metadata(v, "metadata")?,
    };
    // networks: required from 2.37 ("auto", "none" or a list).
    if mv.at_least(37) {
        match o.get("networks") {
            Some(Value::String(s)) if s == "auto" || s == "none" => {}
            Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(bad_field(
                    "networks",
                    format!("Value: {v}. It is not one of 'auto', 'none' or a list of networks"),
                ));
            }
            None => return Err(bad_field("server", "'networks' is a required property")),
        }
    }
    let description = match o.get("description") {
        None | Some(Value::Null) => None,
        Some(_) if !mv.at_least(19) => {
            return Err(bad_field(
                "server",
                "Additional properties are not allowed ('description' was unexpected)",
            ));
        }
        Some(Value::String(d)) if d.len() <= 255 => Some(d.clone()),
        Some(v) => {
            return Err(bad_field(
                "description",
                format!("Value: {v}. It must be a string of at most 255 characters"),
            ));
        }
    };
    // 2.52: tags at create time, with the tag API's rules.
    let tags: Vec<String> = match o.get("tags") {
        None => Vec::new(),
        Some(_) if !mv.at_least(52) => {
            return Err(bad_field(
                "server",
                "Additional properties are not allowed ('tags' was unexpected)",
            ));
        }
        Some(Value::Array(list)) => {
            let mut out: Vec<String> = Vec::new();
            for t in list {
                match t.as_str() {
                    Some(t) if valid_tag(t) => {
                        if !out.iter().any(|x| x == t) {
                            out.push(t.to_string());
                        }
                    }
                    _ => {
                        return Err(bad_field(
                            "tags",
                            format!("Value: {t}. Tags are 1-60 characters without ',' or '/'"),
                        ));
                    }
                }
            }
            if out.len() > 50 {
                return Err(bad_field(
                    "tags",
                    "The number of tags exceeded the per-server limit 50",
                ));
            }
            out
        }
        Some(v) => {
            return Err(bad_field(
                "tags",
                format!("Value: {v}. It must be a list of tags"),
            ));
        }
    };
    let access_ipv4 = access_ip(o.get("accessIPv4"), "accessIPv4", false)?;
    let access_ipv6 = access_ip(o.get("accessIPv6"), "accessIPv6", true)?;
    let count = |k: &str| -> Result<Option<u32>, ApiError> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|n| *n >= 1 && *n <= 1000)
                    .ok_or_else(|| {
                        bad_field(
                            k,
                            format!("Value: {v}. It must be an integer of at least 1"),
                        )
                    })?;
                Ok(Some(n as u32))
            }
        }
    };
    let min_count = count("min_count")?.unwrap_or(1);
    let max_count = count("max_count")?.unwrap_or(min_count);
    if min_count > max_count {
        return Err(ApiError::bad_request("min_count must be <= max_count"));
    }
    let nic_request = super::nics::parse(o.get("networks"), max_count)?;
    let security_groups = super::nics::parse_groups(o.get("security_groups"))?;
    // zone
    let requested_az = match o.get("availability_zone") {
        None | Some(Value::Null) => None,
        Some(Value::String(z)) if z.is_empty() => None,
        Some(Value::String(z)) => Some(z.clone()),
        Some(v) => {
            return Err(bad_field(
                "availability_zone",
                format!("Value: {v}. It is not a string"),
            ));
        }
    };
    let (requested_az, forced_host) = match &requested_az {
        Some(z) if z.contains(':') => {
            if !ctx.is_admin() {
                return Err(policy_denied("os_compute_api:servers:create:forced_host"));
            }
            let mut it = z.splitn(3, ':');
            let zone = it.next().unwrap_or("").to_string();
            let host = it.next().unwrap_or("").to_string();
            (
                if zone.is_empty() { None } else { Some(zone) },
                if host.is_empty() { None } else { Some(host) },
            )
        }
        other => (other.clone(), None),
    };
    // 2.74: a requested host and/or node (admins); the scheduler's
    // filters still run.
    let (mut host, mut node) = (None, None);
    if mv.at_least(74) {
        let field = |k: &str| -> Result<Option<String>, ApiError> {
            match o.get(k) {
                None => Ok(None),
                Some(Value::String(h)) if !h.is_empty() && h.len() <= 255 => Ok(Some(h.clone())),
                Some(v) => Err(bad_field(
                    k,
                    format!("Value: {v}. It is not a valid host name"),
                )),
            }
        };
        host = field("host")?;
        node = field("hypervisor_hostname")?;
        if host.is_some() || node.is_some() {
            if !ctx.is_admin() {
                return Err(policy_denied(
                    "compute:servers:create:requested_destination",
                ));
            }
            if forced_host.is_some() {
                return Err(ApiError::bad_request(
                    "host and hypervisor_hostname cannot be combined with the availability_zone zone:host:node format",
                ));
            }
        }
    }
    // scheduler hints
    let hints = b
        .get("os:scheduler_hints")
        .or(b.get("OS-SCH-HNT:scheduler_hints"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !hints.is_object() {
        return Err(bad_field("os:scheduler_hints", "It must be an object"));
    }
    if let Some(v) = hints.get("group")
        && !v.is_string()
    {
        return Err(bad_field(
            "group",
            format!("Value: {v}. It is not a string"),
        ));
    }
    if let Some(Value::String(qs)) = hints.get("query")
        && serde_json::from_str::<Value>(qs).is_err()
    {
        return Err(bad_field("query", "The JSON query hint is not valid JSON"));
    }
    Ok(CreateServer {
        name: name.clone(),
        flavor_ref,
        image_ref,
        key_name,
        user_data,
        metadata,
        description,
        tags,
        access_ipv4,
        access_ipv6,
        min_count,
        max_count,
        networks: nic_request,
        security_groups,
        availability_zone: requested_az,
        forced_host,
        host,
        hypervisor_hostname: node,
        hints,
        volumes,
    })
}

/// The block device mappings with a volume as destination, checked as
/// Nova's `_validate_bdm` does: `block_device_mapping_v2` entries, and
/// the legacy `block_device_mapping` (`volume_id` / `snapshot_id`, the
/// root when its device is `vda`).
fn block_devices(
    o: &serde_json::Map<String, Value>,
) -> Result<Vec<super::commands::VolumeMapping>, ApiError> {
    use super::commands::{VolumeFrom, VolumeMapping};
    let invalid =
        |why: String| ApiError::bad_request(format!("Block Device Mapping is Invalid: {why}"));
    let mut out: Vec<VolumeMapping> = Vec::new();
    let mut boot_indexes = Vec::new();
    for key in ["block_device_mapping_v2", "block_device_mapping"] {
        let Some(list) = o.get(key) else { continue };
        let list = list
            .as_array()
            .ok_or_else(|| bad_field(key, "It must be a list"))?;
        for b in list {
            let b = b
                .as_object()
                .ok_or_else(|| bad_field(key, "Each mapping must be an object"))?;
            let text = |k: &str| -> Result<Option<String>, ApiError> {
                match b.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
                    Some(v) => Err(bad_field(
                        k,
                        format!("Value: {v}. It must be a string of at most 255 characters"),
                    )),
                }
            };
            let size = match b.get("volume_size") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .filter(|n| *n <= i32::MAX as u64)
                        .ok_or_else(|| {
                            bad_field(
                                "volume_size",
                                format!("Value: {v}. It must be a non-negative integer"),
                            )
                        })?,
                ),
            };
            let boot_index = match b.get("boot_index") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| {
                            bad_field("boot_index", format!("Value: {v}. It must be an integer"))
                        })?,
                ),
            };
            let delete_on_termination = match b.get("delete_on_termination") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(x)) => *x,
                Some(Value::String(s)) => {
                    matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
                }
                Some(v) => {
                    return Err(bad_field(
                        "delete_on_termination",
                        format!("Value: {v}. It must be a boolean"),
                    ));
                }
            };
            let device_name = text("device_name")?;
            let (from, boot_index) = if key == "block_device_mapping" {
                // The legacy form: always a volume.
                let from = if let Some(v) = text("volume_id")? {
                    VolumeFrom::Volume(v)
                } else if let Some(s) = text("snapshot_id")? {
                    VolumeFrom::Snapshot(s)
                } else if b.get("no_device").is_some() || b.get("virtual_name").is_some() {
                    continue;
                } else {
                    return Err(invalid(
                        "a mapping needs a volume_id or a snapshot_id".into(),
                    ));
                };
                let root = device_name
                    .as_deref()
                    .is_some_and(|d| d.trim_start_matches("/dev/").ends_with("da"));
                (from, if root { Some(0) } else { None })
            } else {
                let src = text("source_type")?.unwrap_or_default();
                let dst = text("destination_type")?.unwrap_or_else(|| "local".into());
                let uuid = text("uuid")?;
                match (src.as_str(), dst.as_str()) {
                    ("image" | "blank", "local") => {
                        if boot_index.is_some_and(|i| i >= 0) {
                            boot_indexes.push(boot_index.unwrap_or(-1));
                        }
                        continue;
                    }
                    ("volume" | "snapshot", "local") => {
                        return Err(invalid(format!(
                            "a {src} can only be mapped with destination_type volume"
                        )));
                    }
                    (_, "local" | "volume")
                        if !matches!(src.as_str(), "image" | "volume" | "snapshot" | "blank") =>
                    {
                        return Err(bad_field(
                            "source_type",
                            format!(
                                "Value: {src:?}. It is not one of image, volume, snapshot, blank"
                            ),
                        ));
                    }
                    (_, "volume") => {}
                    _ => {
                        return Err(bad_field(
                            "destination_type",
                            format!("Value: {dst:?}. It is not one of local, volume"),
                        ));
                    }
                }
                let need = || {
                    uuid.clone()
                        .ok_or_else(|| invalid(format!("a {src} mapping needs a uuid")))
                };
                let from = match src.as_str() {
                    "volume" => VolumeFrom::Volume(need()?),
                    "image" => VolumeFrom::Image(need()?),
                    "snapshot" => VolumeFrom::Snapshot(need()?),
                    _ => VolumeFrom::Blank,
                };
                match (&from, size) {
                    (VolumeFrom::Image(_), Some(0) | None) => {
                        return Err(invalid("Images with destination_type 'volume' need to have a non-zero size specified".into()));
                    }
                    (VolumeFrom::Blank, Some(0) | None) => {
                        return Err(invalid("Blank volumes (source: 'blank', dest: 'volume') need to have non-zero size".into()));
                    }
                    _ => {}
                }
                (from, boot_index)
            };
            if let Some(i) = boot_index.filter(|i| *i >= 0) {
                boot_indexes.push(i);
            }
            out.push(VolumeMapping {
                from,
                size,
                boot_index: boot_index.filter(|i| *i >= 0),
                delete_on_termination,
                device_name,
                volume_type: text("volume_type")?,
                tag: text("tag")?,
            });
        }
    }
    boot_indexes.sort();
    if boot_indexes.iter().enumerate().any(|(n, i)| *i != n as i64) {
        return Err(invalid("Boot sequence for the instance and image/block device mapping combination is not valid.".into()));
    }
    if out
        .iter()
        .any(|v| v.boot_index == Some(0) && v.from == VolumeFrom::Blank)
    {
        return Err(invalid("a blank volume cannot be the root disk".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescue_bodies() {
        let none = ServerAction::Rescue {
            admin_pass: None,
            image_ref: None,
        };
        assert_eq!(rescue(&Value::Null).unwrap(), none);
        assert_eq!(rescue(&json!({})).unwrap(), none);
        let id = "0b6e3a4e-5c1e-4d53-9d3f-1f2b3c4d5e6f";
        assert_eq!(
            rescue(&json!({"adminPass": "pw", "rescue_image_ref": id})).unwrap(),
            ServerAction::Rescue {
                admin_pass: Some("pw".into()),
                image_ref: Some(id.into())
            }
        );
        for bad in [
            json!("x"),
            json!([]),
            json!({"bogus": 1}),
            json!({"adminPass": 1}),
            json!({"rescue_image_ref": "not-a-uuid"}),
            json!({"rescue_image_ref": 5}),
        ] {
            assert!(rescue(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resize_bodies() {
        assert_eq!(resize(&json!({"flavorRef": "2"})).unwrap(), "2");
        assert_eq!(resize(&json!({"flavorRef": 3})).unwrap(), "3");
        assert_eq!(
            resize(&json!({"flavorRef": "http://x/flavors/7", "OS-DCF:diskConfig": "AUTO"}))
                .unwrap(),
            "7"
        );
        for bad in [
            json!(null),
            json!("2"),
            json!({}),
            json!({"flavorRef": ""}),
            json!({"flavorRef": []}),
            json!({"flavorRef": "2", "extra": 1}),
            json!({"flavorRef": "2", "OS-DCF:diskConfig": "BOGUS"}),
        ] {
            assert!(resize(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn live_migrate_bodies_follow_the_microversion() {
        let ok = |body: Value, mv: u16| live_migrate(&body, Mv(mv));
        assert_eq!(
            ok(json!({"host": "n2", "block_migration": "auto"}), 30).unwrap(),
            Some("n2".into())
        );
        assert_eq!(
            ok(json!({"host": null, "block_migration": true}), 25).unwrap(),
            None
        );
        // Before 2.25: a boolean and disk_over_commit; force from 2.30 to 2.67.
        assert!(
            ok(
                json!({"host": null, "block_migration": false, "disk_over_commit": false}),
                1
            )
            .is_ok()
        );
        assert!(ok(json!({"host": null, "block_migration": "auto"}), 24).is_err());
        assert!(
            ok(
                json!({"host": null, "block_migration": "auto", "force": true}),
                30
            )
            .is_ok()
        );
        assert!(
            ok(
                json!({"host": null, "block_migration": "auto", "force": true}),
                68
            )
            .is_err()
        );
        for bad in [
            json!(null),
            json!({"host": null}),
            json!({"block_migration": "auto"}),
            json!({"host": "", "block_migration": "auto"}),
            json!({"host": null, "block_migration": "sometimes"}),
            json!({"host": null, "block_migration": "auto", "disk_over_commit": false}),
        ] {
            assert!(ok(bad.clone(), 30).is_err(), "{bad}");
        }
    }

    #[test]
    fn actions_follow_the_microversion() {
        // 2.73 reads a lock reason; before it the body is ignored.
        let lock = json!({"locked_reason": "maintenance"});
        assert_eq!(
            action("lock", &lock, Mv(73)).unwrap(),
            Some(ServerAction::Lock {
                reason: Some("maintenance".into())
            })
        );
        assert_eq!(
            action("lock", &lock, Mv(72)).unwrap(),
            Some(ServerAction::Lock { reason: None })
        );
        // evacuate: onSharedStorage is required (and must be false here)
        // before 2.14 and unknown from it; force only from 2.29 to 2.67.
        let evac = |body: Value, mv: u16| action("evacuate", &body, Mv(mv));
        assert_eq!(
            evac(json!({"host": "n2", "onSharedStorage": false}), 2).unwrap(),
            Some(ServerAction::Evacuate {
                host: Some("n2".into()),
                admin_pass: None
            })
        );
        assert!(evac(json!({"host": "n2"}), 2).is_err());
        assert!(evac(json!({"onSharedStorage": true}), 2).is_err());
        assert!(evac(json!({"onSharedStorage": false}), 14).is_err());
        assert!(evac(json!({"force": true}), 29).is_ok());
        assert!(evac(json!({"force": true}), 68).is_err());
        assert!(evac(json!({"force": "yes"}), 29).is_err());
        assert!(evac(json!({"host": 7}), 14).is_err());
        assert!(evac(json!(null), 14).is_err());
        assert_eq!(
            evac(json!({"adminPass": "pw"}), 14).unwrap(),
            Some(ServerAction::Evacuate {
                host: None,
                admin_pass: Some("pw".into())
            })
        );
        // 2.56 reads a migration's host; 2.77 an unshelve's zone.
        let host = json!({"host": "n1"});
        assert_eq!(
            action("migrate", &host, Mv(56)).unwrap(),
            Some(ServerAction::Migrate {
                host: Some("n1".into())
            })
        );
        assert_eq!(
            action("migrate", &host, Mv(55)).unwrap(),
            Some(ServerAction::Migrate { host: None })
        );
        assert!(action("migrate", &json!({"host": ""}), Mv(56)).is_err());
        assert_eq!(
            action("migrate", &json!({"host": null}), Mv(56)).unwrap(),
            Some(ServerAction::Migrate { host: None })
        );
        assert!(action("unshelve", &json!({"bogus": 1}), Mv(77)).is_err());
        assert!(action("unshelve", &json!({"availability_zone": null}), Mv(77)).is_err());
        assert_eq!(
            action("unshelve", &json!({"availability_zone": "z1"}), Mv(77)).unwrap(),
            Some(ServerAction::Unshelve {
                availability_zone: Some("z1".into())
            })
        );
        assert_eq!(
            action("unshelve", &json!({"bogus": 1}), Mv(76)).unwrap(),
            Some(ServerAction::Unshelve {
                availability_zone: None
            })
        );
        // rebuild's key_name from 2.54 only, and null removes the key.
        let rb = json!({"imageRef": "i", "key_name": null});
        assert!(action("rebuild", &rb, Mv(53)).is_err());
        match action("rebuild", &rb, Mv(54)).unwrap() {
            Some(ServerAction::Rebuild(r)) => assert_eq!(r.key_name, Some(None)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            action("reboot", &json!({"type": "hard"}), Mv(1)).unwrap(),
            Some(ServerAction::Reboot { hard: true })
        );
        assert!(action("reboot", &json!({"type": "firm"}), Mv(1)).is_err());
        assert_eq!(action("bogus", &json!({}), Mv(1)).unwrap(), None);
    }
}
