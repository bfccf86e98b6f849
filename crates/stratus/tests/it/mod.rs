mod cli;
mod common;
mod identity;
