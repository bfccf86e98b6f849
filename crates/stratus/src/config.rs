//! Configuration: command-line flags, each with an environment variable
//! (`STRATUS_*`) as fallback; flags win.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where and how a serving role runs.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STRATUS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Import the images listed in DIR/images.tsv (as written by
    /// scripts/build-test-images) as public images, once.
    #[arg(long, env = "STRATUS_IMPORT_IMAGES", value_name = "DIR")]
    pub import_images: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Settings shared by every command that touches a data directory.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory holding the store, keys and generated client config.
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./stratus-data")]
    pub data_dir: PathBuf,
    /// Base URL clients use to reach this controller (default: from --listen).
    #[arg(long, env = "STRATUS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Region advertised in the service catalog.
    #[arg(long, env = "STRATUS_REGION", default_value = "RegionOne")]
    pub region: String,
    /// Token lifetime in seconds.
    #[arg(long, env = "STRATUS_TOKEN_EXPIRATION", default_value_t = 3600)]
    pub token_expiration: u64,
    /// Seconds a verified password login is remembered, so repeated logins
    /// skip the slow hash (wrong passwords never do); 0 disables.
    #[arg(long, env = "STRATUS_LOGIN_CACHE_SECONDS", default_value_t = 600)]
    pub login_cache_seconds: u64,
    /// Largest image the image service accepts, in bytes (Glance's
    /// image_size_cap; default 1 TiB).
    #[arg(long, env = "STRATUS_IMAGE_SIZE_CAP", default_value_t = 1 << 40)]
    pub image_size_cap: u64,
}

impl CommonArgs {
    pub fn public_url(&self, listen: Option<SocketAddr>) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let addr = listen.unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid address"));
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("http://{host}:{}", addr.port())
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("stratus.db")
    }
}

/// Logs go to stderr, one line per event; `STRATUS_LOG` sets the level
/// (error, warn, info, debug, trace; default info).
pub fn init_logging() {
    use std::io::IsTerminal;
    let level = std::env::var("STRATUS_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
