//! One module per subcommand.

pub mod admin;
pub mod serve;
