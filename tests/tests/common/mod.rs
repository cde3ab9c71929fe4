//! Helpers shared by the integration tests.
//!
//! Where the function binaries are: the target directory is `CARGO_TARGET_TMPDIR`'s parent
//! (cargo sets `CARGO_TARGET_TMPDIR` to `<target-dir>/tmp` when it compiles integration tests,
//! so this follows `CARGO_TARGET_DIR` and `--target-dir` without reading them at run time);
//! test binaries are built with the dev profile, so functions are in `<target-dir>/debug/`.
//! The fake function of this crate is built by cargo for these tests (`CARGO_BIN_EXE_*`); the
//! four real functions need `cargo build --workspace --bins` first.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
use std::time::Duration;

use snapstage_localenv::invoker::{Emulator, Functions, LambdaInvoker, cargo_lambda};
use snapstage_localenv::workspace_root;

pub const FAKE: &str = "fake-function";

/// `<target-dir>/debug`.
pub fn bin_dir() -> PathBuf {
    let fake = Path::new(env!("CARGO_BIN_EXE_fake-function"));
    let from_tmpdir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("debug"));
    match from_tmpdir {
        Some(d) if d.join(FAKE).is_file() => d,
        _ => fake.parent().map(Path::to_path_buf).unwrap_or_default(),
    }
}

/// Scratch space for logs.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::create_dir_all(&d);
    d
}

/// The cargo-lambda binary, if installed.
pub fn cargo_lambda_available() -> Option<PathBuf> {
    let p = cargo_lambda(&workspace_root());
    let found = if p.is_absolute() {
        p.is_file()
    } else {
        std::process::Command::new(&p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    found.then_some(p)
}

/// A Lambda invoker over a fresh emulator, or `None` (after printing SKIP) without cargo-lambda.
pub async fn lambda_invoker(functions: Functions, test: &str) -> Option<LambdaInvoker> {
    let Some(cl) = cargo_lambda_available() else {
        snapstage_localenv::testkit::skip(&format!(
            "{test}: cargo-lambda not found (.venv/bin/cargo-lambda, CARGO_LAMBDA or PATH); run scripts/setup.sh"
        ));
        return None;
    };
    let logs = scratch(test);
    let emulator = Emulator::start(&cl, &workspace_root(), &logs, Duration::from_secs(60))
        .await
        .unwrap();
    Some(LambdaInvoker::new(functions, emulator, &logs).unwrap())
}

/// Both moto endpoints, or `None` after printing SKIP.
pub fn moto(test: &str) -> Option<(String, String)> {
    match (
        std::env::var("SNAPSTAGE_MOTO_CLOUD"),
        std::env::var("SNAPSTAGE_MOTO_ONPREM"),
    ) {
        (Ok(c), Ok(o)) => Some((c, o)),
        _ => {
            snapstage_localenv::testkit::skip(&format!(
                "{test}: SNAPSTAGE_MOTO_CLOUD / SNAPSTAGE_MOTO_ONPREM not set; run `scripts/services.sh start` and `eval \"$(scripts/services.sh env)\"`"
            ));
            None
        }
    }
}
