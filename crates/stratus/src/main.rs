//! `stratus`: one binary for every role of the cloud.

mod commands;
mod config;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stratus", version, about = "An edge cloud that speaks the OpenStack APIs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cloud on this machine (API and store), bootstrapping it on first start.
    Up(config::ServeArgs),
    /// Run a controller's API services on an already bootstrapped store.
    Controller(config::ServeArgs),
    /// Operator tools.
    #[command(subcommand)]
    Admin(commands::admin::AdminCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    config::init_logging();
    let result = match cli.command {
        Command::Up(args) => commands::serve::run(args, true),
        Command::Controller(args) => commands::serve::run(args, false),
        Command::Admin(cmd) => commands::admin::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
