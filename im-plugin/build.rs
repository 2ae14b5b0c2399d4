//! Build script of mqim-im-plugin: tells the tests whether a ScyllaDB is available.
//!
//! The ScyllaDB log's tests (`src/store/scylla_log/`) need a real server. With `SCYLLA_URI`
//! (`host:port`) set and non-empty they are compiled to run (`cfg(scylla_available)`); without it
//! they are reported as ignored, never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(scylla_available)");
    println!("cargo::rerun-if-env-changed=SCYLLA_URI");
    if std::env::var("SCYLLA_URI").is_ok_and(|uri| !uri.is_empty()) {
        println!("cargo::rustc-cfg=scylla_available");
    }
}
