//! Shelving (`shelve`, `shelveOffload`, `unshelve`), as Nova does it with
//! `shelved_offload_time = 0`.
//!
//! `shelve` (from ACTIVE, SHUTOFF, PAUSED or SUSPENDED, no task, not
//! locked) creates the image `<name>-shelved` and puts the server into
//! task `shelving`; the node agent stops the workload, writes its root
//! file system into that image (tasks `shelving_image_pending_upload`,
//! `shelving_image_uploading`) and lets the workload and its disk go. The
//! server is then SHELVED_OFFLOADED: on no node, holding nothing in
//! placement (quota usage still counts it, as Nova's legacy quotas do).
//! A failed shelve deletes the image and leaves the server as it was.
//!
//! `unshelve` (from SHELVED_OFFLOADED; 2.77 may name an availability
//! zone) schedules the server again like a new build (task `unshelving`, then `spawning` on the chosen node),
//! booting the shelved image; once it runs the image is deleted and the
//! server is ACTIVE. When no node has room it stays SHELVED_OFFLOADED with
//! a fault, as in Nova.
//!
//! Servers never stay in SHELVED: it is passed through on the way to
//! SHELVED_OFFLOADED, so `shelveOffload` of an offloaded server is a 409.

use super::common::{check_locked, fetch_tx, record_action};
use super::model::Server;
use super::states::wrong_state;
use super::states::{power, task, vm};
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// `shelve`: 202.
pub fn shelve(state: &AppState, ctx: &Ctx, s: &Server, rid: &str) -> Result<(), ApiError> {
    if s.image_ref.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Instance {} has no image to shelve into.",
            s.id
        )));
    }
    super::states::may_move(state, s, "shelve")?;
    super::snapshots::shelve(state, ctx, s, rid)
}

/// `shelveOffload`: only a SHELVED server can be offloaded, and servers
/// are offloaded as they are shelved.
pub fn shelve_offload(ctx: &Ctx, s: &Server) -> Result<(), ApiError> {
    check_locked(ctx, s)?;
    Err(wrong_state("shelveOffload", s))
}

/// `unshelve`: 202; the scheduler finds a node.
pub fn unshelve(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    zone: Option<String>,
    rid: &str,
) -> Result<(), ApiError> {
    if let Some(z) = &zone
        && !super::zones::zone_exists(state, z)?
    {
        return Err(ApiError::bad_request(format!(
            "The requested availability zone is not available: {z}"
        )));
    }
    let id = s.id.clone();
    state.store.write(|tx| {
        let mut cur = fetch_tx(tx, ctx, &id)?;
        check_locked(ctx, &cur)?;
        if cur.task_state.is_some() || cur.vm_state != vm::SHELVED_OFFLOADED {
            return Err(wrong_state("unshelve", &cur));
        }
        if zone.is_some() {
            cur.requested_az = zone.clone();
        }
        cur.task_state = Some(task::UNSHELVING.into());
        cur.tried_hosts.clear();
        cur.fault = None;
        cur.generation += 1;
        cur.updated_us = now_us();
        tx.update(&cur)?;
        record_action(tx, &cur, "unshelve", ctx, rid)?;
        Ok(())
    })?;
    super::scheduler::submit(state, vec![id]);
    Ok(())
}

/// The node wrote the shelved image and let the workload go: the server
/// leaves its node. Runs inside the report's transaction.
pub fn offloaded(cur: &mut Server, image_id: &str) {
    cur.vm_state = vm::SHELVED_OFFLOADED.into();
    cur.power_state = power::NOSTATE;
    cur.shelved_image = Some(image_id.to_string());
    cur.host = None;
    cur.node = None;
}
