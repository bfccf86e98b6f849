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
    /// Edge sites of this controller: each is a child controller and an availability zone.
    #[command(subcommand)]
    Site(SiteCommand),
}

#[derive(Subcommand)]
pub enum SiteCommand {
    /// Register a site and print its one-time join token:
    /// `stratus controller --parent URL --join-token TOKEN` joins with it.
    Create {
        #[command(flatten)]
        common: CommonArgs,
        /// The site's name, which is also its availability zone.
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the sites with their state and last contact.
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print a new join token for a site (one that lost its data or was revoked).
    Token {
        #[command(flatten)]
        common: CommonArgs,
        /// The site's name or id.
        site: String,
    },
    /// Revoke a site's certificate: its link is refused until it joins again.
    Revoke {
        #[command(flatten)]
        common: CommonArgs,
        site: String,
    },
    /// Decommission a site: its record and certificate go.
    Delete {
        #[command(flatten)]
        common: CommonArgs,
        site: String,
    },
}

fn site_ca(common: &CommonArgs) -> anyhow::Result<stratus_api::sync::pki::SiteCa> {
    Ok(stratus_api::sync::pki::SiteCa::open(
        &common.data_dir.join("sync").join("ca"),
    )?)
}

fn site_command(cmd: SiteCommand) -> anyhow::Result<()> {
    use stratus_api::sync::parent;
    let api = |e: stratus_api::ApiError| anyhow::anyhow!("{}", e.message);
    match cmd {
        SiteCommand::Create {
            common,
            name,
            description,
        } => {
            let store = open_store(&common, Durability::Full)?;
            let ca = site_ca(&common)?;
            let (site, token) = parent::create(&store, &ca, &name, &description).map_err(api)?;
            eprintln!(
                "stratus: site {} ({}) created; its join token (valid once, for 24 h):",
                site.name, site.id
            );
            eprintln!(
                "stratus:   stratus controller --parent https://THIS_HOST:SYNC_PORT --join-token TOKEN ..."
            );
            println!("{token}");
            Ok(())
        }
        SiteCommand::List { common } => {
            let store = open_store(&common, Durability::Full)?;
            let contact = store.liveness(stratus_api::sites::CONTACT_KIND)?;
            let acked = store.liveness(stratus_api::sites::ACKED_KIND)?;
            let rev = store.last_revision()?;
            println!(
                "{:<36}  {:<20}  {:<10}  {:<27}  {:<6}  {:<8}  LAG",
                "ID", "NAME", "STATE", "LAST CONTACT", "NODES", "SERVERS"
            );
            for s in store.list::<stratus_api::sites::Site>(&stratus_store::Query::all())? {
                let last = contact.get(&s.id).copied().unwrap_or(0);
                let lag = acked.get(&s.id).map(|a| (rev - a).max(0).to_string());
                let up = s.nodes.iter().filter(|n| n.state == "up").count();
                let running: u64 = s.nodes.iter().map(|n| n.running_vms).sum();
                println!(
                    "{:<36}  {:<20}  {:<10}  {:<27}  {:<6}  {:<8}  {}",
                    s.id,
                    s.name,
                    s.state,
                    if last > 0 {
                        stratus_api::timeutil::iso_us(last)
                    } else {
                        "-".into()
                    },
                    format!("{up}/{}", s.nodes.len()),
                    running,
                    lag.unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        }
        SiteCommand::Token { common, site } => {
            let store = open_store(&common, Durability::Full)?;
            let ca = site_ca(&common)?;
            println!("{}", parent::rejoin_token(&store, &ca, &site).map_err(api)?);
            Ok(())
        }
        SiteCommand::Revoke { common, site } => {
            let store = open_store(&common, Durability::Full)?;
            let s = parent::revoke_site(&store, &site).map_err(api)?;
            println!("revoked the certificate of site {} ({})", s.name, s.id);
            Ok(())
        }
        SiteCommand::Delete { common, site } => {
            let store = open_store(&common, Durability::Full)?;
            let s = parent::find_in(&store, &site).map_err(api)?;
            store.write(|tx| tx.delete::<stratus_api::sites::Site>(&s.id))?;
            println!("deleted site {} ({})", s.name, s.id);
            Ok(())
        }
    }
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
        AdminCommand::Site(cmd) => site_command(cmd),
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
