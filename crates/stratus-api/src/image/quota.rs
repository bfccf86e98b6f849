//! Image quotas from Keystone's unified limits, as Glance enforces them
//! (`use_keystone_limits`): `image_count_total` (images a project owns),
//! `image_size_total` (MiB of active image data a project owns) and
//! `image_stage_total` (MiB staged by the import flow).
//!
//! A project's own limit wins over the registered default. A resource
//! with neither is unlimited (Glance would treat it as 0: nothing allowed,
//! which is not what a new cloud wants).

use axum::http::StatusCode;
use stratus_store::{Query, Store};

use super::model::Image;
use crate::ApiError;
use crate::identity::model::{Limit, RegisteredLimit, Service};
use crate::identity::quota::{self as engine, Meter};

pub const COUNT_TOTAL: &str = "image_count_total";
pub const SIZE_TOTAL: &str = "image_size_total";
pub const STAGE_TOTAL: &str = "image_stage_total";
const MIB: u64 = 1024 * 1024;

/// The limit on `resource` for `project`, or `None` when unlimited.
pub fn limit(store: &Store, project: &str, resource: &str) -> Result<Option<i64>, ApiError> {
    let Some(svc) = store
        .list::<Service>(&Query::all())?
        .into_iter()
        .find(|s| s.kind == "image")
    else {
        return Ok(None);
    };
    let own = store
        .list::<Limit>(&Query {
            owner: Some(project),
            parent: Some(&svc.id),
            name: Some(resource),
            ..Query::default()
        })?
        .into_iter()
        .next();
    if let Some(l) = own {
        return Ok(Some(l.resource_limit));
    }
    Ok(store
        .list::<RegisteredLimit>(&Query {
            parent: Some(&svc.id),
            name: Some(resource),
            ..Query::default()
        })?
        .into_iter()
        .next()
        .map(|l| l.default_limit))
}

/// oslo.limit's over-limit message, as Glance answers it (413).
fn over_limit(project: &str, resource: &str, limit: i64, usage: u64, delta: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Project {project} is over a limit for [Resource {resource} is over limit of {limit} due to current usage {usage} and delta {delta}]"
        ),
    )
}

/// Refuses a new image when the project already owns its limit.
/// Runs inside the write that creates the image (`tx`).
pub fn check_count(store: &Store, tx: &stratus_store::Tx, project: &str) -> Result<(), ApiError> {
    if engine::model(tx)? != engine::Model::Flat {
        return engine::take(tx, &IMAGES, project, 1).map_err(|o| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Project {project} is over a limit for [{}]", o.why),
            )
        });
    }
    if let Some(max) = limit(store, project, COUNT_TOTAL)? {
        let used = store.list::<Image>(&Query::owner(project))?.len() as u64;
        if used as i64 + 1 > max {
            return Err(over_limit(project, COUNT_TOTAL, max, used, 1));
        }
    }
    Ok(())
}

/// Bytes of image data the project owns (active or deactivated images,
/// plus, with `staged`, data staged for import).
fn usage(store: &Store, project: &str, staged: bool) -> Result<u64, ApiError> {
    Ok(store
        .list::<Image>(&Query::owner(project))?
        .iter()
        .map(|i| {
            if staged {
                i.staged.as_ref().map_or(0, |s| s.size)
            } else if i.blob.is_some() {
                i.size.unwrap_or(0)
            } else {
                0
            }
        })
        .sum())
}

/// Bytes the project may still upload (`u64::MAX` when unlimited).
pub fn bytes_left(store: &Store, project: &str, staged: bool) -> Result<u64, ApiError> {
    let resource = if staged { STAGE_TOTAL } else { SIZE_TOTAL };
    if !staged && engine::model_of(store)? != engine::Model::Flat {
        let room = store.write(|tx| engine::room(tx, &IMAGE_SIZE, project))?;
        return Ok(room.map_or(u64::MAX, |r| (r.max(0) as u64).saturating_mul(MIB)));
    }
    let Some(max) = limit(store, project, resource)? else {
        return Ok(u64::MAX);
    };
    let used = usage(store, project, staged)?;
    let max_bytes = (max.max(0) as u64).saturating_mul(MIB);
    Ok(max_bytes.saturating_sub(used))
}

/// The 413 for an upload of `attempted` bytes past the project's quota.
pub fn over_size(store: &Store, project: &str, staged: bool, attempted: u64) -> ApiError {
    let resource = if staged { STAGE_TOTAL } else { SIZE_TOTAL };
    let max = limit(store, project, resource).ok().flatten().unwrap_or(0);
    let used = usage(store, project, staged).unwrap_or(0);
    over_limit(
        project,
        resource,
        max,
        used.div_ceil(MIB),
        attempted.div_ceil(MIB),
    )
}

// ---- the quota engine's meters ---------------------------------------------

const IMAGE: &[&str] = &["image"];

/// Images a project owns (`image_count_total`).
pub static IMAGES: Meter = Meter {
    services: IMAGE,
    resource: COUNT_TOTAL,
    own: |_, _| Ok(None),
    default: |_| Ok(-1),
    used: |tx, p| Ok(tx.list::<Image>(&Query::owner(p))?.len() as i64),
    own_all: None,
    subtree: None,
    reserved_all: None,
};

/// MiB of image data a project owns (`image_size_total`).
pub static IMAGE_SIZE: Meter = Meter {
    services: IMAGE,
    resource: SIZE_TOTAL,
    own: |_, _| Ok(None),
    default: |_| Ok(-1),
    used: |tx, p| {
        let bytes: u64 = tx
            .list::<Image>(&Query::owner(p))?
            .iter()
            .filter(|i| i.blob.is_some())
            .map(|i| i.size.unwrap_or(0))
            .sum();
        Ok(bytes.div_ceil(MIB) as i64)
    },
    own_all: None,
    subtree: None,
    reserved_all: None,
};

/// Every image meter the engine enforces.
pub static METERS: [&Meter; 2] = [&IMAGES, &IMAGE_SIZE];
