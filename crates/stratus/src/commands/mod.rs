//! One module per subcommand.

pub mod admin;
pub mod agent;
pub mod serve;
pub mod sim;
