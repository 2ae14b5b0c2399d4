//! Browser scripts (`tests/browser/*.mjs`, playwright-core driving Debian's headless Chromium)
//! run from Rust tests that own the broker and the MQTT clients.

use std::path::PathBuf;

/// Where test artifacts (screenshots) go: the cargo target dir.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Runs a browser script from `tests/browser/` with `env`; panics with its output on failure.
pub async fn run_browser_script(script: &str, env: &[(&str, String)]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists() && PathBuf::from("/usr/bin/chromium").exists(),
        "the browser tests need Debian's chromium and playwright-core in tests/browser: run scripts/test (it installs both)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script).current_dir(&dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the browser script finished in time")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
