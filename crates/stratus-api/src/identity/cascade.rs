//! Deletes that reach across identity's resources (a domain takes its
//! projects, users, groups and roles; a project its assignments,
//! application credentials, trusts and endpoint associations), in one
//! place, so the resource modules call down here and never each other.

use stratus_store::{Query as Q, Tx};

use super::assignments;
use super::model::*;
use crate::ApiError;

/// Deletes a user with its memberships, assignments, credentials, access
/// rules and the trusts it gives or receives.
pub fn delete_user(tx: &Tx, id: &str) -> Result<(), ApiError> {
    for m in tx.list::<Membership>(&Q::owner(id))? {
        tx.delete::<Membership>(&m.id)?;
    }
    for c in tx.list::<Credential>(&Q::owner(id))? {
        tx.delete::<Credential>(&c.id)?;
    }
    for ac in tx.list::<AppCredential>(&Q::owner(id))? {
        tx.delete::<AppCredential>(&ac.id)?;
    }
    for r in tx.list::<AccessRule>(&Q::owner(id))? {
        tx.delete::<AccessRule>(&r.id)?;
    }
    super::trusts::delete_for_user(tx, id)?;
    assignments::delete_touching(tx, id)?;
    if !tx.delete::<User>(id)? {
        return Err(ApiError::not_found("user", id));
    }
    Ok(())
}

pub fn delete_group(tx: &Tx, id: &str) -> Result<(), ApiError> {
    for m in tx.list::<Membership>(&Q::parent(id))? {
        tx.delete::<Membership>(&m.id)?;
    }
    assignments::delete_touching(tx, id)?;
    if !tx.delete::<Group>(id)? {
        return Err(ApiError::not_found("group", id));
    }
    Ok(())
}

/// Deletes a leaf project with its assignments, application credentials
/// and trusts.
pub fn delete_project(tx: &Tx, id: &str) -> Result<(), ApiError> {
    if !tx.list::<Project>(&Q::parent(id))?.is_empty() {
        return Err(ApiError::forbidden(&format!(
            "identity:delete_project (cannot delete project {id}: it is not a leaf in the hierarchy)"
        )));
    }
    assignments::delete_touching(tx, id)?;
    for ac in tx.list::<AppCredential>(&Q::parent(id))? {
        tx.delete::<AppCredential>(&ac.id)?;
    }
    super::trusts::delete_for_project(tx, id)?;
    forget_project(tx, id)?;
    if !tx.delete::<Project>(id)? {
        return Err(ApiError::not_found("project", id));
    }
    Ok(())
}

/// Deletes a disabled domain with everything in it.
pub fn delete_domain(tx: &Tx, id: &str) -> Result<(), ApiError> {
    let d = tx.fetch::<Domain>(id)?;
    if d.enabled {
        return Err(ApiError::forbidden(
            "identity:delete_domain (cannot delete a domain that is enabled, please disable it first)",
        ));
    }
    if d.id == DEFAULT_DOMAIN_ID {
        return Err(ApiError::forbidden(
            "identity:delete_domain (the default domain cannot be deleted)",
        ));
    }
    // Leaves first: a project is deleted only after its children.
    let mut projects = tx.list::<Project>(&Q::owner(id))?;
    let by_id: std::collections::HashMap<String, Option<String>> = projects
        .iter()
        .map(|p| (p.id.clone(), p.parent_id.clone()))
        .collect();
    let depth = |p: &Project| {
        let (mut d, mut cur) = (0, p.parent_id.clone());
        while let Some(c) = cur.filter(|_| d < 64) {
            d += 1;
            cur = by_id.get(&c).cloned().flatten();
        }
        d
    };
    projects.sort_by_key(|p| std::cmp::Reverse(depth(p)));
    for p in projects {
        delete_project(tx, &p.id)?;
    }
    for u in tx.list::<User>(&Q::owner(id))? {
        delete_user(tx, &u.id)?;
    }
    for g in tx.list::<Group>(&Q::owner(id))? {
        delete_group(tx, &g.id)?;
    }
    for r in tx.list::<Role>(&Q::owner(id))? {
        super::roles::delete_in(tx, &r.id)?;
    }
    assignments::delete_touching(tx, id)?;
    tx.delete::<DomainConfig>(id)?;
    tx.delete::<Domain>(id)?;
    Ok(())
}

/// Drops a project's associations (when the project goes).
pub fn forget_project(tx: &Tx, project_id: &str) -> Result<(), ApiError> {
    for a in tx.list::<ProjectEndpointGroup>(&Q::owner(project_id))? {
        tx.delete::<ProjectEndpointGroup>(&a.id)?;
    }
    for a in tx.list::<ProjectEndpoint>(&Q::owner(project_id))? {
        tx.delete::<ProjectEndpoint>(&a.id)?;
    }
    Ok(())
}

/// Drops an endpoint's project associations (when the endpoint goes).
pub fn forget_endpoint(tx: &Tx, endpoint_id: &str) -> Result<(), ApiError> {
    for a in tx.list::<ProjectEndpoint>(&Q::parent(endpoint_id))? {
        tx.delete::<ProjectEndpoint>(&a.id)?;
    }
    Ok(())
}
