//! `stratus`: one binary for every role of the cloud.

mod commands;
mod config;
mod datadir;
mod join;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stratus",
    version,
    about = "An edge cloud that speaks the OpenStack APIs"
)]
struct Cli {
    /// Log line format on stderr: text, or json (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "STRATUS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: config::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cloud on this machine (API and store), bootstrapping it on first start.
    Up(config::ServeArgs),
    /// Run a controller's API services on an already bootstrapped store.
    Controller(config::ServeArgs),
    /// Run a node agent that joins a controller and runs its workloads.
    Agent(config::AgentCmd),
    /// Operator tools.
    #[command(subcommand)]
    Admin(commands::admin::AdminCommand),
    /// For benchmarks only: many simulated edge sites' links to a parent
    /// in one process (each joins and syncs; nothing is stored or run).
    SimSites(commands::sim::SimSitesArgs),
}

/// Keeps memory use flat: big, short-lived buffers (the 19 MiB an Argon2
/// password check needs) go straight back to the OS instead of lingering in
/// one malloc arena per thread, and the number of arenas stays small.
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes glibc allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every node agent's long-poll holds a socket in the controller (and
/// each simulated node one in `stratus agent --fake-nodes`): the soft
/// open-file limit goes up to the hard one, as servers' unit files do
/// with LimitNOFILE.
#[allow(unsafe_code)]
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    raise_open_files();
    let cli = Cli::parse();
    config::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Up(args) => commands::serve::run(args, true),
        Command::Controller(args) => commands::serve::run(args, false),
        Command::Agent(cmd) => commands::agent::run(cmd),
        Command::Admin(cmd) => commands::admin::run(cmd),
        Command::SimSites(args) => commands::sim::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
