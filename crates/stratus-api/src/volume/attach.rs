//! Attachments, both sides in one write: the volume's `attachments` and
//! status (Cinder) and the server's `volumes` (Nova's block device
//! mappings). The server's list is the desired state the node agent makes
//! true; the agent's word ([`settle`]) moves `attaching` to `in-use` and
//! ends a detach, or rolls either back when the node could not do it.
//! A crash anywhere leaves the records saying what to do next, and the
//! agent's reconcile of the running workload ends attached or detached.

use stratus_store::Tx;
use stratus_wire::volume::AttachReport;

use super::model::{Volume, VolumeAttachment, VolumeType};
use crate::ApiError;
use crate::compute::model::{ROOT_DEVICE, Server, ServerVolume, SwapFrom};
use crate::timeutil::now_us;

/// The status a volume has with the attachments it has left.
pub fn status_of(v: &Volume) -> &'static str {
    if v.attachments.is_empty() {
        "available"
    } else if v.attachments.iter().any(|a| a.status == "attached") {
        "in-use"
    } else if v.attachments.iter().any(|a| a.status == "detaching") {
        "detaching"
    } else if v.attachments.iter().any(|a| a.status == "attaching") {
        "attaching"
    } else {
        // Only reservations made through the attachments API (3.27).
        "reserved"
    }
}

/// Whether the volume's type lets it attach to several servers
/// (`multiattach="<is> True"`).
pub fn multiattach(tx: &Tx, v: &Volume) -> Result<bool, ApiError> {
    Ok(tx
        .get::<VolumeType>(&v.volume_type_id)?
        .is_some_and(|t| type_multiattach(&t)))
}

/// Whether volumes of type `t` may attach to several servers.
pub fn type_multiattach(t: &VolumeType) -> bool {
    t.extra_specs
        .get("multiattach")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("<is> True"))
}

/// The last device name a volume may take: the node lays volumes out in
/// PCI slots 0x5 to 0xf (`vdb` to `vdl`), between the disks and the NICs.
const LAST_DEVICE: u8 = b'l';

/// The first free `/dev/vdX` after the root disk.
pub fn next_device(s: &Server) -> Option<String> {
    (b'b'..=LAST_DEVICE)
        .map(|c| format!("/dev/vd{}", c as char))
        .find(|d| !s.volumes.iter().any(|v| &v.device == d))
}

/// Whether `d` is a device name a volume can take (`/dev/vdb` to
/// `/dev/vdl`).
pub fn valid_device(d: &str) -> bool {
    d.strip_prefix("/dev/vd")
        .is_some_and(|n| n.len() == 1 && (b'b'..=LAST_DEVICE).contains(&n.as_bytes()[0]))
}

/// Whether Nova's API takes `d` as a device name (its pattern
/// `(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$`, which comes down to
/// `/dev/`, letters, then digits: `/dev/vdb`, `/dev/xvdc`, `/dev/sdb1`).
pub fn nova_device_name(d: &str) -> bool {
    d.strip_prefix("/dev/").is_some_and(|n| {
        let digits = n.trim_start_matches(|c: char| c.is_ascii_lowercase());
        digits.len() < n.len() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// What an attach asks for.
pub struct AttachRequest {
    pub device: Option<String>,
    pub tag: Option<String>,
    pub delete_on_termination: bool,
}

/// Records a new attachment of `v` to `s` (both written). The caller has
/// checked who asks, the server's state and where both are.
pub fn attach(
    tx: &Tx,
    s: &mut Server,
    v: &mut Volume,
    req: AttachRequest,
) -> Result<ServerVolume, ApiError> {
    let sv = reserve(tx, s, v, req)?;
    tx.update(s)?;
    Ok(sv)
}

/// [`attach`] for a server not yet written (one being created): `v` is
/// written, `s` is the caller's to insert. A volume still being made for
/// it (`creating`, no attachment yet) may be reserved; `/dev/vda` is the
/// root volume of a server booting from it.
pub fn reserve(
    tx: &Tx,
    s: &mut Server,
    v: &mut Volume,
    req: AttachRequest,
) -> Result<ServerVolume, ApiError> {
    if s.volumes.iter().any(|x| x.volume_id == v.id)
        || v.attachments
            .iter()
            .any(|a| a.server_id.as_deref() == Some(&s.id))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} is already attached to instance {}.",
            v.id, s.id
        )));
    }
    let shareable = v.status == "in-use" && multiattach(tx, v)?;
    let fresh = v.status == "creating" && v.attachments.is_empty();
    if v.status != "available" && !shareable && !fresh {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume '{}' status must be 'available'. Currently in '{}'",
            v.id, v.status
        )));
    }
    let device = match req.device {
        Some(d) if d == ROOT_DEVICE && s.volumes.is_empty() && s.host.is_none() => d,
        Some(d) if !nova_device_name(&d) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute device. Value: {d}. It does not match '(^/dev/x{{0,1}}[a-z]{{0,1}}d{{0,1}})([a-z]+)[0-9]*$'"
            )));
        }
        // A free volume slot is honoured; any other name Nova's libvirt
        // driver ignores ("can't honour user-supplied dev names"), and so
        // does Stratus: the volume takes the next free slot.
        Some(d) if valid_device(&d) && !s.volumes.iter().any(|x| x.device == d) => d,
        _ => next_device(s).ok_or_else(|| {
            ApiError::bad_request(
                "No free disk device names for prefix 'vd' (a server takes 11 volumes)",
            )
        })?,
    };
    let now = now_us();
    let att = VolumeAttachment {
        id: uuid::Uuid::new_v4().to_string(),
        server_id: Some(s.id.clone()),
        device: Some(device.clone()),
        host_name: s.host.clone(),
        status: "attaching".into(),
        attached_us: now,
        mode: None,
    };
    let sv = ServerVolume {
        volume_id: v.id.clone(),
        device,
        attachment_id: att.id.clone(),
        tag: req.tag,
        delete_on_termination: req.delete_on_termination,
        state: "attaching".into(),
        swap_from: None,
    };
    v.attachments.push(att);
    if !fresh {
        v.status = status_of(v).into();
    }
    v.updated_us = now;
    s.volumes.push(sv.clone());
    s.updated_us = now;
    tx.update(v)?;
    Ok(sv)
}

/// Starts detaching `volume_id` from `s` (both written); Nova's 404 when
/// it is not attached, 400 while an attach or detach is under way.
pub fn begin_detach(tx: &Tx, s: &mut Server, volume_id: &str) -> Result<(), ApiError> {
    let Some(sv) = s.volumes.iter_mut().find(|x| x.volume_id == volume_id) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("volume_id not found: {volume_id}"),
        ));
    };
    if sv.state != "attached" {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Unable to detach volume {volume_id}: it is {} (status must be 'in-use').",
            sv.state
        )));
    }
    sv.state = "detaching".into();
    let att_id = sv.attachment_id.clone();
    let now = now_us();
    s.updated_us = now;
    if let Some(mut v) = tx.get::<Volume>(volume_id)? {
        for a in v.attachments.iter_mut().filter(|a| a.id == att_id) {
            a.status = "detaching".into();
        }
        v.status = status_of(&v).into();
        v.updated_us = now;
        tx.update(&v)?;
    }
    tx.update(s)?;
    Ok(())
}

/// Starts swapping `new` in for the volume `old_id` of `s` (Nova's swap
/// volume; the server and both volumes written): `new` is attaching at
/// the same device, and the old volume detaching, until the node has
/// copied the old volume onto the new one and moved the guest's disk
/// over ([`settle`] ends it either way). The caller has checked who
/// asks, the server's state and where the volumes are.
pub fn begin_swap(tx: &Tx, s: &mut Server, old_id: &str, new: &mut Volume) -> Result<(), ApiError> {
    let Some(sv) = s.volumes.iter_mut().find(|x| x.volume_id == old_id) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("volume_id not found: {old_id}"),
        ));
    };
    if sv.state != "attached" {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Unable to swap volume {old_id}: it is {} (status must be 'in-use').",
            sv.state
        )));
    }
    if new.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: New volume must be detached in order to swap (volume {} is {}).",
            new.id, new.status
        )));
    }
    let now = now_us();
    let att = VolumeAttachment {
        id: uuid::Uuid::new_v4().to_string(),
        server_id: Some(s.id.clone()),
        device: Some(sv.device.clone()),
        host_name: s.host.clone(),
        status: "attaching".into(),
        attached_us: now,
        mode: None,
    };
    set_attachment(tx, old_id, &sv.attachment_id, "detaching")?;
    sv.swap_from = Some(SwapFrom {
        volume_id: old_id.to_string(),
        attachment_id: std::mem::replace(&mut sv.attachment_id, att.id.clone()),
    });
    sv.volume_id = new.id.clone();
    sv.state = "swapping".into();
    new.attachments.push(att);
    new.status = status_of(new).into();
    new.updated_us = now;
    tx.update(new)?;
    s.updated_us = now;
    tx.update(s)?;
    Ok(())
}

/// Drops the attachment `att_id` from its volume (which becomes
/// available when it was the last).
fn drop_attachment(tx: &Tx, volume_id: &str, att_id: &str) -> Result<(), ApiError> {
    if let Some(mut v) = tx.get::<Volume>(volume_id)? {
        v.attachments.retain(|a| a.id != att_id);
        v.status = status_of(&v).into();
        v.updated_us = now_us();
        tx.update(&v)?;
    }
    Ok(())
}

fn set_attachment(tx: &Tx, volume_id: &str, att_id: &str, status: &str) -> Result<(), ApiError> {
    if let Some(mut v) = tx.get::<Volume>(volume_id)? {
        for a in v.attachments.iter_mut().filter(|a| a.id == att_id) {
            a.status = status.into();
        }
        v.status = status_of(&v).into();
        v.updated_us = now_us();
        tx.update(&v)?;
    }
    Ok(())
}

/// The node's word on a server's volumes: attaches it has done are
/// settled, detaches it has done end, failures roll back (an attach that
/// failed goes away, a detach that failed stays attached, as Cinder's
/// `os-roll_detaching`). Returns whether anything changed.
pub fn settle(tx: &Tx, server_id: &str, r: &AttachReport) -> Result<bool, ApiError> {
    let Some(mut s) = tx.get::<Server>(server_id)? else {
        return Ok(false);
    };
    let failed = |id: &str| r.failed.iter().find(|f| f.volume_id == id);
    let mut changed = false;
    let mut keep = Vec::new();
    // The root volume is the disk the workload booted from: attached once
    // the server has run.
    let launched = s.launched_us.is_some();
    for mut sv in std::mem::take(&mut s.volumes) {
        let here = r.attached.contains(&sv.volume_id) || (sv.device == ROOT_DEVICE && launched);
        // A volume moving to another storage node (a migration in use):
        // done when the node says the guest's disk is the new copy's.
        let moving = sv
            .swap_from
            .as_ref()
            .is_some_and(|f| f.volume_id == sv.volume_id);
        if moving && sv.state == "swapping" {
            let outcome = match failed(&sv.volume_id) {
                Some(f) => Some(Err(f.error.clone())),
                None if r.moved.contains(&sv.volume_id) => Some(Ok(())),
                None => None,
            };
            if let Some(outcome) = outcome {
                super::moves::finish(tx, &sv.volume_id, outcome)?;
                sv.swap_from = None;
                sv.state = "attached".into();
                changed = true;
            }
            keep.push(sv);
            continue;
        }
        // A failure counts before presence: after a failed call the node
        // does not know what the workload has.
        match sv.state.as_str() {
            "attaching" if here && failed(&sv.volume_id).is_none() => {
                sv.state = "attached".into();
                set_attachment(tx, &sv.volume_id, &sv.attachment_id, "attached")?;
                changed = true;
            }
            "attaching" if failed(&sv.volume_id).is_some() => {
                if let Some(f) = failed(&sv.volume_id) {
                    tracing::warn!(server = server_id, volume = %sv.volume_id, error = %f.error, "attach failed; rolled back");
                }
                drop_attachment(tx, &sv.volume_id, &sv.attachment_id)?;
                changed = true;
                continue;
            }
            "swapping" if failed(&sv.volume_id).is_some() => {
                if let Some(f) = failed(&sv.volume_id) {
                    tracing::warn!(server = server_id, volume = %sv.volume_id, error = %f.error, "swap failed; the old volume stays");
                }
                drop_attachment(tx, &sv.volume_id, &sv.attachment_id)?;
                if let Some(from) = sv.swap_from.take() {
                    sv.volume_id = from.volume_id;
                    sv.attachment_id = from.attachment_id;
                    set_attachment(tx, &sv.volume_id, &sv.attachment_id, "attached")?;
                }
                sv.state = "attached".into();
                changed = true;
            }
            "swapping" if here => {
                sv.state = "attached".into();
                set_attachment(tx, &sv.volume_id, &sv.attachment_id, "attached")?;
                if let Some(from) = sv.swap_from.take() {
                    drop_attachment(tx, &from.volume_id, &from.attachment_id)?;
                }
                changed = true;
            }
            "detaching" if failed(&sv.volume_id).is_some() => {
                if let Some(f) = failed(&sv.volume_id) {
                    tracing::warn!(server = server_id, volume = %sv.volume_id, error = %f.error, "detach failed; still attached");
                }
                sv.state = "attached".into();
                set_attachment(tx, &sv.volume_id, &sv.attachment_id, "attached")?;
                changed = true;
            }
            "detaching" if !here => {
                drop_attachment(tx, &sv.volume_id, &sv.attachment_id)?;
                changed = true;
                continue;
            }
            _ => {}
        }
        keep.push(sv);
    }
    s.volumes = keep;
    if changed {
        s.updated_us = now_us();
        tx.update(&s)?;
    }
    Ok(changed)
}

/// A server that goes away lets its volumes go (Nova detaches them when
/// it deletes the instance).
pub fn release_server(tx: &Tx, s: &Server) -> Result<(), ApiError> {
    for sv in &s.volumes {
        drop_attachment(tx, &sv.volume_id, &sv.attachment_id)?;
        if let Some(from) = &sv.swap_from {
            drop_attachment(tx, &from.volume_id, &from.attachment_id)?;
        }
    }
    // A volume it was moving stays where it was, the copy goes.
    for sv in &s.volumes {
        if sv.state == "swapping"
            && sv
                .swap_from
                .as_ref()
                .is_some_and(|f| f.volume_id == sv.volume_id)
        {
            super::moves::finish(
                tx,
                &sv.volume_id,
                Err(format!("server {} was deleted during the move", s.id)),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_stay_in_the_volume_slots() {
        assert!(valid_device("/dev/vdb") && valid_device("/dev/vdl"));
        for bad in [
            "/dev/vda",
            "/dev/vdm",
            "/dev/sdb",
            "vdb",
            "/dev/vdbb",
            "/dev/vd",
        ] {
            assert!(!valid_device(bad), "{bad}");
        }
    }

    #[test]
    fn device_names_nova_takes() {
        for good in [
            "/dev/vdb",
            "/dev/xvdb",
            "/dev/sdc",
            "/dev/hda1",
            "/dev/vdzz",
        ] {
            assert!(nova_device_name(good), "{good}");
        }
        for bad in [
            "vdb",
            "/dev/",
            "/dev/1",
            "/dev/VDB",
            "/dev/vd b",
            "/dev/vdb/x",
            "",
        ] {
            assert!(!nova_device_name(bad), "{bad}");
        }
    }
}
