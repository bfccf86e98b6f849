mod cli;
mod common;
mod compute;
mod compute_admin;
mod compute_real;
mod identity;
mod image;
mod sdk;
