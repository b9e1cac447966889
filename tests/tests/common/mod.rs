//! Shared helpers for the conformance tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/fixtures` beside the checkout (read-only in CI).
pub fn fixtures() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Ok(dir) = std::env::var("DPC_FIXTURES") {
        return PathBuf::from(dir);
    }
    root.join("../shared/fixtures")
}

/// This repository's own small fixtures (`tests/fixtures`).
pub fn local_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A scratch directory for files a test writes (never inside the fixtures).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dpc-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The descriptors issue 2 supports, each with model.dp, model.yaml and reference/<name>.json.
pub const MODELS: [&str; 5] = ["se_e2_a", "se_e2_a_tos", "se_e2_r", "se_e3", "se_atten"];
