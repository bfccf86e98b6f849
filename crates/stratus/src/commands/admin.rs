//! `stratus admin ...`: operator tools that work on a data directory.

use std::path::Path;

use clap::Subcommand;
use stratus_api::identity::{bootstrap, credentials, fernet, node_users};
use stratus_store::{Durability, Store};

use crate::config::CommonArgs;
use crate::datadir::write_private;

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
    /// Create the credential key repository (it encrypts credential blobs at rest) if it has no keys.
    CredentialSetup {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Rotate the credential keys and re-encrypt every credential with the new primary key.
    CredentialRotate {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Re-encrypt every credential with the primary credential key (and any stored in clear).
    CredentialMigrate {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print a one-time join token for a node: `stratus agent --join-token TOKEN` joins with it.
    NodeToken {
        #[command(flatten)]
        common: CommonArgs,
        /// The node the token is for (default: any node name not joined yet). A node that
        /// joined before joins again only with a token made for its name.
        #[arg(long = "node-name")]
        node_name: Option<String>,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        expires: u64,
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
        AdminCommand::CredentialSetup { common } => {
            crate::datadir::prepare_controller(&common.data_dir, Some(&common.store_path()))?;
            credentials::CredentialKeys::open(&common.data_dir)?;
            println!(
                "credential keys in {}",
                common.data_dir.join(credentials::KEY_DIR).display()
            );
            Ok(())
        }
        AdminCommand::CredentialRotate { common } => {
            let store = open_store(&common, Durability::Full)?;
            let keys = credentials::CredentialKeys::open(&common.data_dir)?;
            // Rows in clear (an older version's) are sealed and scrubbed
            // first.
            crate::datadir::migrate_credentials(&store, &keys)?;
            let (primary, m) = credentials::rotate(&store, &keys)
                .map_err(|e| anyhow::anyhow!("rotating the credential keys: {e}"))?;
            println!(
                "rotated {}: new primary key {primary}; {} credentials re-encrypted",
                common.data_dir.join(credentials::KEY_DIR).display(),
                m.resealed
            );
            unreadable(&m)
        }
        AdminCommand::CredentialMigrate { common } => {
            let store = open_store(&common, Durability::Full)?;
            let keys = credentials::CredentialKeys::open(&common.data_dir)?;
            let m = crate::datadir::migrate_credentials(&store, &keys)?;
            println!(
                "{} credentials re-encrypted with the primary key, {} encrypted that were in clear",
                m.resealed, m.plaintext
            );
            unreadable(&m)
        }
        AdminCommand::NodeToken {
            common,
            node_name,
            expires,
        } => {
            let store = open_store(&common, Durability::Full)?;
            let (token, t) = node_users::issue_join_token(&store, node_name.as_deref(), expires)
                .map_err(|e| anyhow::anyhow!("making a join token: {e}"))?;
            eprintln!(
                "stratus: a join token for {}, valid once for {expires} s (until {}):",
                t.node_name
                    .as_deref()
                    .map_or("a new node".to_string(), |n| format!("node {n}")),
                stratus_api::timeutil::iso_naive(t.expires_at_us)
            );
            eprintln!("stratus:   stratus agent --controller URL --join-token TOKEN ...");
            println!("{token}");
            Ok(())
        }
    }
}

fn unreadable(m: &credentials::Migrated) -> anyhow::Result<()> {
    if m.unreadable.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "no credential key opens credentials {:?}: were keys removed by hand?",
            m.unreadable
        )
    }
}

/// Creates the data directory (mode 0700, what Stratus wrote there
/// owner-only) and opens the store in it.
pub fn open_store(common: &CommonArgs, durability: Durability) -> anyhow::Result<Store> {
    match &common.database {
        Some(url) => {
            if !Store::is_database_url(url) {
                anyhow::bail!(
                    "--database takes a PostgreSQL URL (postgres://user:password@host:port/db), not {url:?}"
                );
            }
            crate::datadir::prepare_controller(&common.data_dir, None)?;
            Ok(Store::open_url(url)?)
        }
        None => {
            crate::datadir::prepare_controller(&common.data_dir, Some(&common.store_path()))?;
            Ok(Store::open(&common.store_path(), durability)?)
        }
    }
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
