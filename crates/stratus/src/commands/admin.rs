//! `stratus admin ...`: operator tools that work on a data directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use stratus_api::identity::{bootstrap, fernet};
use stratus_store::{Durability, Store};

use crate::config::CommonArgs;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create the default domain, admin project, user and roles, and the catalog (idempotent).
    Bootstrap {
        #[command(flatten)]
        common: CommonArgs,
        /// Set the admin password (default: generate one on first bootstrap, keep it after).
        #[arg(long, env = "STRATUS_ADMIN_PASSWORD")]
        admin_password: Option<String>,
    },
    /// Create the Fernet key repository if it has no keys.
    FernetSetup {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Rotate the Fernet keys: tokens issued before stay valid until their key is rotated out.
    FernetRotate {
        #[command(flatten)]
        common: CommonArgs,
    },
}

pub fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Bootstrap {
            common,
            admin_password,
        } => {
            let store = open_store(&common, Durability::Full)?;
            let url = common.public_url(None);
            bootstrap_and_report(&store, &common, &url, admin_password)
        }
        AdminCommand::FernetSetup { common } => {
            let dir = common.data_dir.join("fernet-keys");
            let created = fernet::setup(&dir)?;
            println!(
                "{} {}",
                if created {
                    "created keys in"
                } else {
                    "keys already present in"
                },
                dir.display()
            );
            Ok(())
        }
        AdminCommand::FernetRotate { common } => {
            let dir = common.data_dir.join("fernet-keys");
            fernet::setup(&dir)?;
            let primary = fernet::rotate(&dir)?;
            println!("rotated {}: new primary key {primary}", dir.display());
            Ok(())
        }
    }
}

/// Creates the data directory (mode 0700) and opens the store in it.
pub fn open_store(common: &CommonArgs, durability: Durability) -> anyhow::Result<Store> {
    let dir = &common.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(Store::open(&common.store_path(), durability)?)
}

/// Bootstraps and, when the admin password was set now, writes
/// `clouds.yaml` and `openrc`; says where they are either way.
pub fn bootstrap_and_report(
    store: &Store,
    common: &CommonArgs,
    public_url: &str,
    admin_password: Option<String>,
) -> anyhow::Result<()> {
    let out = bootstrap::bootstrap(
        store,
        &bootstrap::BootstrapOptions {
            admin_password,
            region: common.region.clone(),
            public_url: public_url.to_string(),
        },
    )
    .map_err(|e| anyhow::anyhow!("bootstrap failed: {e}"))?;
    let dir = &common.data_dir;
    if let Some(pw) = &out.admin_password {
        write_client_config(dir, public_url, &common.region, pw)?;
        tracing::info!(user = "admin", "bootstrapped: admin credentials written");
    }
    let clouds = dir.join("clouds.yaml");
    println!("stratus: identity at {public_url}/identity/v3");
    println!(
        "stratus: admin credentials in {} (cloud \"stratus\") and {}",
        clouds.display(),
        dir.join("openrc").display()
    );
    println!(
        "stratus: try   OS_CLIENT_CONFIG_FILE={} openstack --os-cloud stratus token issue",
        clouds.display()
    );
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes `clouds.yaml` (cloud `stratus`) and `openrc` for the admin user.
pub fn write_client_config(
    dir: &Path,
    public_url: &str,
    region: &str,
    password: &str,
) -> anyhow::Result<()> {
    let auth_url = format!("{public_url}/identity/v3");
    let clouds = format!(
        "clouds:\n  stratus:\n    auth:\n      auth_url: {auth_url}\n      username: admin\n      password: \"{password}\"\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {region}\n    interface: public\n    identity_api_version: 3\n"
    );
    let openrc = format!(
        "export OS_AUTH_URL={auth_url}\nexport OS_USERNAME=admin\nexport OS_PASSWORD='{password}'\nexport OS_PROJECT_NAME=admin\nexport OS_USER_DOMAIN_NAME=Default\nexport OS_PROJECT_DOMAIN_NAME=Default\nexport OS_REGION_NAME={region}\nexport OS_IDENTITY_API_VERSION=3\nexport OS_INTERFACE=public\n"
    );
    write_private(&dir.join("clouds.yaml"), &clouds)?;
    write_private(&dir.join("openrc"), &openrc)?;
    Ok(())
}
