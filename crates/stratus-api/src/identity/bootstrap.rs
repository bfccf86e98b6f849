//! Bootstrap, as `keystone-manage bootstrap` does it: the default domain,
//! an admin project and user, the admin/manager/member/reader/service roles
//! with admin implying manager implying member implying reader, the region
//! and the identity service in the catalog. Idempotent: what exists is kept
//! (the admin password is only set when the user is created, or when one
//! is given explicitly). A store bootstrapped before `manager` existed
//! gets it on the next run, and its direct admin -> member rule is replaced
//! by the chain through manager, as current Keystone does.

use stratus_store::{Query, Store};

use super::model::*;
use super::new_id;
use crate::ApiError;

pub struct BootstrapOptions {
    pub admin_password: Option<String>,
    pub region: String,
    /// Base URL of this controller, e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
}

pub struct BootstrapOutcome {
    pub admin_user_id: String,
    pub admin_project_id: String,
    /// The admin password when this run set it.
    pub admin_password: Option<String>,
}

/// A random password of 24 URL-safe characters.
pub fn generate_password() -> String {
    random_secret(18)
}

/// `n` random bytes as URL-safe base64 that never starts with `-`: a
/// secret beginning with a dash is taken for an option when it is passed
/// on a command line (`--password -x...`).
pub fn random_secret(n: usize) -> String {
    use base64::Engine;
    let mut raw = vec![0u8; n];
    loop {
        super::fernet::fill_random(&mut raw);
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        if !s.starts_with('-') {
            return s;
        }
    }
}

/// Registers a service and its public/internal/admin endpoints in the
/// catalog, or updates their URL. Later services call this at start.
pub fn ensure_service(
    store: &Store,
    kind: &str,
    name: &str,
    region: &str,
    url: &str,
) -> Result<(), ApiError> {
    store.write(|tx| {
        let service = match tx
            .list::<Service>(&Query::all())?
            .into_iter()
            .find(|s| s.kind == kind)
        {
            Some(s) => s,
            None => {
                let s = Service {
                    id: new_id(),
                    kind: kind.into(),
                    name: Some(name.into()),
                    description: None,
                    enabled: true,
                };
                tx.insert(&s)?;
                s
            }
        };
        let existing = tx.list::<Endpoint>(&Query::parent(&service.id))?;
        for interface in ["public", "internal", "admin"] {
            match existing
                .iter()
                .find(|e| e.interface == interface && e.region_id.as_deref() == Some(region))
            {
                Some(e) if e.url == url => {}
                Some(e) => {
                    let mut e = e.clone();
                    e.url = url.into();
                    tx.update(&e)?;
                }
                None => {
                    tx.insert(&Endpoint {
                        id: new_id(),
                        service_id: service.id.clone(),
                        interface: interface.into(),
                        region_id: Some(region.into()),
                        url: url.into(),
                        enabled: true,
                    })?;
                }
            }
        }
        Ok::<_, ApiError>(())
    })
}

pub fn bootstrap(store: &Store, opts: &BootstrapOptions) -> Result<BootstrapOutcome, ApiError> {
    // Hash outside the transaction: it is slow on purpose.
    let needs_user = store
        .get_unique::<User>(&format!("{DEFAULT_DOMAIN_ID}/admin"))?
        .is_none();
    let password = match (&opts.admin_password, needs_user) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(generate_password()),
        (None, false) => None,
    };
    let hash = password.as_deref().map(super::password::hash);
    let out = store.write(|tx| {
        if tx.get::<Domain>(DEFAULT_DOMAIN_ID)?.is_none() {
            tx.insert(&Domain {
                id: DEFAULT_DOMAIN_ID.into(),
                name: "Default".into(),
                description: "The default domain".into(),
                enabled: true,
                tags: vec![],
                options: Default::default(),
            })?;
        }
        let project = match tx
            .list::<Project>(&Query::owner(DEFAULT_DOMAIN_ID))?
            .into_iter()
            .find(|p| p.name == "admin")
        {
            Some(p) => p,
            None => {
                let p = Project {
                    id: new_id(),
                    name: "admin".into(),
                    domain_id: DEFAULT_DOMAIN_ID.into(),
                    description: "Bootstrap project for initializing the cloud.".into(),
                    enabled: true,
                    parent_id: None,
                    tags: vec![],
                    options: Default::default(),
                    extra: Default::default(),
                };
                tx.insert(&p)?;
                p
            }
        };
        let user = match tx
            .list::<User>(&Query::owner(DEFAULT_DOMAIN_ID))?
            .into_iter()
            .find(|u| u.name == "admin")
        {
            Some(mut u) => {
                if let Some(h) = &hash {
                    u.password_hash = Some(h.clone());
                    u.password_set_at_us = Some(crate::timeutil::now_us());
                    u.enabled = true;
                    tx.update(&u)?;
                }
                u
            }
            None => {
                let u = User {
                    id: new_id(),
                    name: "admin".into(),
                    domain_id: DEFAULT_DOMAIN_ID.into(),
                    enabled: true,
                    password_hash: hash.clone(),
                    password_set_at_us: Some(crate::timeutil::now_us()),
                    default_project_id: None,
                    description: None,
                    options: Default::default(),
                    extra: Default::default(),
                };
                tx.insert(&u)?;
                u
            }
        };
        let roles = tx.list::<Role>(&Query::all())?;
        let role_id = |name: &str| -> Result<String, ApiError> {
            if let Some(r) = roles
                .iter()
                .find(|r| r.name == name && r.domain_id.is_none())
            {
                return Ok(r.id.clone());
            }
            let r = Role {
                id: new_id(),
                name: name.into(),
                domain_id: None,
                description: None,
                options: Default::default(),
            };
            tx.insert(&r)?;
            Ok(r.id)
        };
        let admin = role_id("admin")?;
        let manager = role_id("manager")?;
        let member = role_id("member")?;
        let reader = role_id("reader")?;
        role_id("service")?;
        for (p, i) in [(&admin, &manager), (&manager, &member), (&member, &reader)] {
            tx.upsert(&Inference::new(p, i))?;
        }
        // Older bootstraps made admin imply member directly.
        tx.delete::<Inference>(&Inference::new(&admin, &member).id)?;
        tx.upsert(&Assignment::new(
            ActorKind::User,
            &user.id,
            TargetKind::Project,
            &project.id,
            &admin,
            false,
        ))?;
        tx.upsert(&Assignment::new(
            ActorKind::User,
            &user.id,
            TargetKind::System,
            SYSTEM_ALL,
            &admin,
            false,
        ))?;
        if tx.get::<Region>(&opts.region)?.is_none() {
            tx.insert(&Region {
                id: opts.region.clone(),
                description: String::new(),
                parent_region_id: None,
            })?;
        }
        Ok::<_, ApiError>(BootstrapOutcome {
            admin_user_id: user.id,
            admin_project_id: project.id,
            admin_password: password.clone(),
        })
    })?;
    ensure_service(
        store,
        "identity",
        "keystone",
        &opts.region,
        &format!("{}/identity", opts.public_url),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(store: &Store) -> Vec<(String, String)> {
        let name = |id: &str| store.fetch::<Role>(id).unwrap().name;
        let mut out: Vec<(String, String)> = store
            .list::<Inference>(&Query::all())
            .unwrap()
            .iter()
            .map(|i| (name(&i.prior_role_id), name(&i.implied_role_id)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn secrets_never_start_with_a_dash() {
        for _ in 0..2000 {
            let p = generate_password();
            assert_eq!(p.len(), 24);
            assert!(!p.starts_with('-'), "{p}");
        }
    }

    #[test]
    fn upgrades_a_store_bootstrapped_without_manager() {
        let store = Store::open_in_memory().unwrap();
        let opts = BootstrapOptions {
            admin_password: Some("pw".into()),
            region: "RegionOne".into(),
            public_url: "http://127.0.0.1:1".into(),
        };
        let first = bootstrap(&store, &opts).unwrap();
        let chain = vec![
            ("admin".to_string(), "manager".to_string()),
            ("manager".into(), "member".into()),
            ("member".into(), "reader".into()),
        ];
        assert_eq!(rules(&store), chain);
        // Make it look like an older bootstrap: no manager, admin -> member.
        store
            .write(|tx| {
                let roles = tx.list::<Role>(&Query::all())?;
                let id = |n: &str| roles.iter().find(|r| r.name == n).unwrap().id.clone();
                tx.delete::<Inference>(&Inference::new(&id("admin"), &id("manager")).id)?;
                tx.delete::<Inference>(&Inference::new(&id("manager"), &id("member")).id)?;
                tx.delete::<Role>(&id("manager"))?;
                tx.insert(&Inference::new(&id("admin"), &id("member")))?;
                Ok::<_, ApiError>(())
            })
            .unwrap();
        let opts = BootstrapOptions {
            admin_password: None,
            ..opts
        };
        let again = bootstrap(&store, &opts).unwrap();
        assert_eq!(again.admin_user_id, first.admin_user_id);
        assert_eq!(rules(&store), chain);
        let names: Vec<String> = store
            .list::<Role>(&Query::all())
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names.iter().filter(|n| *n == "manager").count(), 1);
    }
}
