//! Integration tests: each starts the real `stratus` binary on a temporary
//! data directory and an ephemeral port, and talks HTTP to it. One test
//! binary with a module per area, so it links once.

mod it;
