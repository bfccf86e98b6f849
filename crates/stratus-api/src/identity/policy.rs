//! Who may do what: Keystone's default policy.
//!
//! - `admin` (on any scope, as Keystone's `admin_required`) may do everything;
//! - a reader with system scope may read everything;
//! - a reader with domain scope may read the users, groups, projects and
//!   assignments of that domain;
//! - everyone may read themselves, their own projects and the project their
//!   token is scoped to, change their own password, and manage their own
//!   application credentials;
//! - nobody without `admin` writes anything else. Since `admin` implies
//!   `member` implies `reader`, a reader never has it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::service::{Invalid, Validated, validate};
use super::token::Scope;
use crate::{ApiError, AppState};

/// The authenticated caller of a request (from `X-Auth-Token`).
pub struct Ctx(pub Arc<Validated>);

impl std::ops::Deref for Ctx {
    type Target = Validated;
    fn deref(&self) -> &Validated {
        &self.0
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tok = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        match validate(state, tok.trim(), false) {
            Ok(v) => Ok(Ctx(v)),
            Err(Invalid::Store(e)) => Err(e),
            Err(_) => Err(ApiError::unauthorized()),
        }
    }
}

impl Ctx {
    pub fn user_id(&self) -> &str {
        &self.user.id
    }

    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// Reader (or better) on the system scope.
    pub fn system_reader(&self) -> bool {
        self.data.scope == Scope::System && self.has_role("reader") || self.is_admin()
    }

    /// Reader (or better) scoped to `domain_id`.
    pub fn domain_reader(&self, domain_id: &str) -> bool {
        matches!(&self.data.scope, Scope::Domain(d) if d == domain_id) && self.has_role("reader")
    }

    /// The domain a domain-scoped reader may read, if any.
    pub fn reader_domain(&self) -> Option<&str> {
        match &self.data.scope {
            Scope::Domain(d) if self.has_role("reader") => Some(d),
            _ => None,
        }
    }

    pub fn project_id(&self) -> Option<&str> {
        match &self.data.scope {
            Scope::Project(p) => Some(p),
            _ => None,
        }
    }

    /// Token from a restricted application credential.
    pub fn restricted(&self) -> bool {
        self.app_cred.as_ref().is_some_and(|a| !a.unrestricted)
    }

    pub fn require_admin(&self, action: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(action))
        }
    }

    /// Allows when `ok`, else a 403 naming the policy rule.
    pub fn allow(&self, ok: bool, action: &str) -> Result<(), ApiError> {
        if ok || self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(action))
        }
    }

    /// May read objects of `domain_id` (users, groups, projects).
    pub fn can_read_domain_objects(&self, domain_id: &str) -> bool {
        self.system_reader() || self.domain_reader(domain_id)
    }
}
