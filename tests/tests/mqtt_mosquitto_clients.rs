//! The general broker with Debian's `mosquitto_pub` / `mosquitto_sub` (a third client stack,
//! libmosquitto), on what they can show: 5.0 user properties and QoS 2 kept by a retained
//! message, the RETAIN flag on delivery (3.1.1 and 5.0), and no will after a normal disconnect.
//! Retained messages are used so that no test races a subscription against a publish.

mod common;

use std::process::Command;

use common::raw::open_acl_broker;

fn run(bin: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin} (package mosquitto-clients) cannot run: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn user_properties_and_qos2_of_a_retained_5_0_message_reach_mosquitto_sub() {
    let (b, _c) = open_acl_broker("");
    let port = b.mqtt_port;
    run(
        "mosquitto_pub",
        port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "2",
            "-r",
            "-t",
            "mc/p",
            "-m",
            "hi",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    );
    let got = run(
        "mosquitto_sub",
        port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "2",
            "-t",
            "mc/p",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "%q %r %P %p",
        ],
    );
    assert_eq!(got, "2 1 k:v hi");
}

#[test]
fn a_retained_message_reaches_a_3_1_1_mosquitto_sub_with_retain_1_mqtt_3_3_1_8() {
    let (b, _c) = open_acl_broker("");
    let port = b.mqtt_port;
    run(
        "mosquitto_pub",
        port,
        &["-q", "1", "-r", "-t", "mc/r", "-m", "kept"],
    );
    let got = run(
        "mosquitto_sub",
        port,
        &[
            "-V", "mqttv311", "-q", "1", "-t", "mc/r", "-C", "1", "-W", "5", "-F", "%q %r %p",
        ],
    );
    assert_eq!(got, "1 1 kept");
}

#[test]
fn mosquitto_pub_disconnecting_normally_leaves_no_will() {
    let (b, _c) = open_acl_broker("");
    let port = b.mqtt_port;
    for v in ["mqttv5", "mqttv311"] {
        run(
            "mosquitto_pub",
            port,
            &[
                "-V",
                v,
                "-q",
                "1",
                "-t",
                "mc/x",
                "-m",
                "x",
                "--will-topic",
                "mc/will",
                "--will-payload",
                "gone",
                "--will-retain",
                "--will-qos",
                "1",
            ],
        );
    }
    // A retained will would be there for a later subscriber.
    let got = run(
        "mosquitto_sub",
        port,
        &[
            "-V", "mqttv5", "-t", "mc/will", "-C", "1", "-W", "2", "-F", "%p",
        ],
    );
    assert_eq!(got, "", "a will was published");
}
