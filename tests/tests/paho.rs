//! The general broker through a second, independent MQTT stack: Eclipse Paho's Python client
//! (paho-mqtt 2.x, v3.1.1 and v5). Each test runs one check of `paho/general.py` against a
//! fresh broker whose ACL is open outside `im/`. `scripts/test` installs paho-mqtt from PyPI into
//! `target/paho-venv`; elsewhere set `MQIM_PAHO_PYTHON` to a Python that has it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::raw::open_acl_broker;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("MQIM_PAHO_PYTHON") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let p = target.join("paho-venv/bin/python");
    assert!(
        p.exists(),
        "no Python with paho-mqtt: run scripts/test (it creates {}) or set MQIM_PAHO_PYTHON",
        p.display()
    );
    p
}

fn run(check: &str) {
    let (b, _conf) = open_acl_broker("");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho/general.py");
    let out = Command::new(python())
        .arg(script)
        .arg(b.mqtt_port.to_string())
        .arg(check)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{check}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One test per check of `general.py`, named the same.
macro_rules! paho_checks {
    ($($name:ident),* $(,)?) => {
        const CHECKS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

paho_checks!(
    v5_properties_are_forwarded,
    v5_qos2_is_delivered_as_qos2,
    retained_messages_have_retain_1,
    v5_normal_disconnect_sends_no_will,
    v5_crash_sends_the_will,
    v5_empty_client_id_gets_an_assigned_identifier,
    v5_subscription_ids_and_no_local,
    v311_persistent_session_gets_queued_messages,
    v5_persistent_session_gets_queued_messages,
    v5_message_expiry_is_applied,
);

#[test]
fn every_check_in_general_py_has_a_test() {
    let script = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho/general.py"),
    )
    .unwrap();
    let list = script
        .split("CHECKS = {f.__name__: f for f in [")
        .nth(1)
        .and_then(|rest| rest.split("]}").next())
        .expect("CHECKS in general.py");
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(
        names, CHECKS,
        "general.py's CHECKS and paho_checks! disagree"
    );
}
