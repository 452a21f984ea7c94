//! Helpers shared by the end-to-end tests of the binary.

use std::process::{Command, Output};

/// Runs the built `tongban` binary from the repository root.
pub fn tongban(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tongban"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}
