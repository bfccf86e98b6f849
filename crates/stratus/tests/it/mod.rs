mod cli;
mod common;
mod identity;
mod image;
