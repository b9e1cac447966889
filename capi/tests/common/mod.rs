//! What the capi tests share: paths, and the cdylib itself (cargo builds only the rlib for
//! integration tests, so the tests build `libdeepmd_c.so` of the same profile first).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/fixtures` beside the checkout, or `DPC_FIXTURES`.
pub fn fixtures() -> PathBuf {
    match std::env::var("DPC_FIXTURES") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => root().join("../shared/fixtures"),
    }
}

pub fn upstream() -> PathBuf {
    fixtures().join("upstream")
}

/// The directory holding an up-to-date `libdeepmd_c.so` of this test's profile.
pub fn lib_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target = dir.parent().unwrap().to_path_buf();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "dpc-capi", "--lib"])
                .arg("--target-dir")
                .arg(&target)
                .current_dir(root());
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cannot run cargo");
            assert!(status.success(), "building libdeepmd_c.so failed");
            assert!(
                dir.join("libdeepmd_c.so").exists(),
                "libdeepmd_c.so is not in {}",
                dir.display()
            );
            dir
        })
        .clone()
}
