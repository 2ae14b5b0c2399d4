//! Build script of the end-to-end suite: tells the tests whether a ScyllaDB is available.
//!
//! Tests of several nodes need a log the nodes share (`redis+scylla`): `redis+embedded` is one
//! node, and the broker refuses a second one on the same Redis. With `SCYLLA_URI` (`host:port`)
//! set and non-empty they run (`cfg(scylla_available)`); without it they are reported as ignored,
//! never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(scylla_available)");
    println!("cargo::rerun-if-env-changed=SCYLLA_URI");
    if std::env::var("SCYLLA_URI").is_ok_and(|uri| !uri.is_empty()) {
        println!("cargo::rustc-cfg=scylla_available");
    }
}
