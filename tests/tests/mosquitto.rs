//! The quickstart path with stock tools: `mqim token` for a password, Debian's `mosquitto_pub` to
//! send and `mosquitto_sub` to receive, and `mosquitto_sub` refused another user's downlink.
//!
//! Needs the `mosquitto_pub` / `mosquitto_sub` binaries (package mosquitto-clients). Without them
//! these tests fail; they never pass silently.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{seq, Broker, Device, SECRET};
use serde_json::{json, Value};

/// A `Command` for a mosquitto client, failing the test if the binary is not installed.
fn mosquitto(bin: &str) -> Command {
    match Command::new(bin).arg("--help").output() {
        Ok(_) => Command::new(bin),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{bin} is not installed: install mosquitto-clients (apt-get install mosquitto-clients) \
             to run these tests"
        ),
        Err(e) => panic!("cannot run {bin}: {e}"),
    }
}

/// What the docs tell a user to run: `mqim token <user>` with the broker's data dir and secret.
fn mqim_token(b: &Broker, user: &str) -> String {
    let out = Command::new(common::mqim_bin())
        .args(["token", user])
        .env("MQIM_DATA_DIR", b.dir.path())
        .env("MQIM_AUTH_HS256_SECRET", SECRET)
        .env_remove("MQIM_CONFIG")
        .output()
        .expect("run mqim token");
    assert!(
        out.status.success(),
        "mqim token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

/// A running `mosquitto_sub` whose stdout is read line by line.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Sub {
    fn spawn(mut cmd: Command) -> Sub {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sub {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line satisfying `pred`, within `within`.
    fn line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "mosquitto_sub printed no expected line; it printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for exit; returns (exit code, remaining stdout lines, stderr).
    fn finish(mut self, within: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        // The reader thread ends at EOF; collect what it still has.
        let mut rest = std::mem::take(&mut self.seen);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            rest.push(l);
        }
        (status.code(), rest, err)
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sub_cmd(b: &Broker, user: &str, password: &str, client_id: &str, topics: &[&str]) -> Command {
    // mosquitto_sub block-buffers a piped stdout; line buffering shows each line as it happens.
    mosquitto("mosquitto_sub");
    let mut c = Command::new("stdbuf");
    c.args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &b.mqtt_port.to_string()])
        .args(["-u", user, "-P", password, "-i", client_id, "-q", "1", "-d"]);
    for t in topics {
        c.args(["-t", t]);
    }
    c
}

fn run_pub(
    b: &Broker,
    version: &str,
    user: &str,
    password: &str,
    client_id: &str,
    payload: &Value,
) -> Output {
    mosquitto("mosquitto_pub")
        .args([
            "-V",
            version,
            "-h",
            "127.0.0.1",
            "-p",
            &b.mqtt_port.to_string(),
        ])
        .args(["-u", user, "-P", password, "-i", client_id, "-q", "1"])
        .args(["-t", &format!("im/{user}/{client_id}/up/json")])
        .args(["-m", &payload.to_string()])
        .output()
        .expect("run mosquitto_pub")
}

#[test]
fn mosquitto_pub_send_with_an_mqim_token_reaches_mosquitto_sub_on_the_receivers_downlink() {
    let b = Broker::start();
    let bob_token = mqim_token(&b, "bob");
    let alice_token = mqim_token(&b, "alice");

    let mut cmd = sub_cmd(
        &b,
        "bob",
        &bob_token,
        "bob-cli",
        &["im/bob/bob-cli/down/json"],
    );
    cmd.args(["-C", "1", "-W", "20"]);
    let mut sub = Sub::spawn(cmd);
    let granted = sub.line(Duration::from_secs(10), |l| {
        l.starts_with("Subscribed (mid")
    });
    assert!(
        granted.ends_with(": 1"),
        "bob's own downlink not granted at QoS 1: {granted}"
    );

    let send = json!({"id": "r1", "send": {"to": "u:bob", "clientMsgId": "cli-1", "text": "hi from the shell"}});
    let out = run_pub(&b, "mqttv311", "alice", &alice_token, "alice-cli", &send);
    assert!(
        out.status.success(),
        "mosquitto_pub failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let line = sub.line(common::WAIT, |l| l.starts_with('{'));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let ev = &v["event"];
    assert_eq!(seq(ev), 1, "{v}");
    let m = &ev["message"];
    assert_eq!(m["from"], "alice", "{v}");
    assert_eq!(m["conversation"], "u:alice", "{v}");
    assert_eq!(m["text"], "hi from the shell", "{v}");
    assert_eq!(m["clientMsgId"], "cli-1", "{v}");
    assert!(
        m["msgId"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{v}"
    );
    let (code, _, err) = sub.finish(common::WAIT);
    assert_eq!(
        code,
        Some(0),
        "mosquitto_sub -C 1 should exit 0 after one message: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_is_denied_another_users_downlink_and_receives_nothing() {
    let b = Broker::start();
    let mut bob = Device::connect(&b, "bob", "bp").await;
    let alice_token = mqim_token(&b, "alice");

    // Only bob's downlink: the SUBACK refuses it (128); mosquitto_sub reports it and gives up
    // at once (exit 0, before its -W timeout), having printed no message.
    let mut cmd = sub_cmd(&b, "alice", &alice_token, "aspy", &["im/bob/bp/down/json"]);
    cmd.args(["-W", "8"]);
    let t = Instant::now();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let mut sub = Sub::spawn(cmd);
        let acked = sub.line(Duration::from_secs(10), |l| {
            l.starts_with("Subscribed (mid")
        });
        assert!(
            acked.ends_with(": 128"),
            "subscription not refused: {acked}"
        );
        sub.finish(Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(
        err.contains("All subscription requests were denied"),
        "stderr: {err:?}"
    );
    assert_eq!(
        code,
        Some(0),
        "exit code of mosquitto_sub after a refused subscription"
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "it waited for -W instead of stopping"
    );
    assert!(
        !out.iter().any(|l| l.starts_with('{')),
        "received something: {out:?}"
    );

    // Bob's downlink next to alice's own: only hers is granted. While carol's message reaches
    // bob, the spy gets nothing and runs into its -W timeout (exit 27).
    let mut cmd = sub_cmd(
        &b,
        "alice",
        &alice_token,
        "aspy",
        &["im/bob/bp/down/json", "im/alice/aspy/down/json"],
    );
    cmd.args(["-W", "3"]);
    let spy = tokio::task::spawn_blocking(move || {
        let mut sub = Sub::spawn(cmd);
        let acked = sub.line(Duration::from_secs(10), |l| {
            l.starts_with("Subscribed (mid")
        });
        assert!(
            acked.ends_with(": 128, 1"),
            "expected refused + granted: {acked}"
        );
        sub
    })
    .await
    .unwrap();
    let send = json!({"id": "c1", "send": {"to": "u:bob", "clientMsgId": "carol-1", "text": "for bob only"}});
    let out = run_pub(
        &b,
        "mqttv5",
        "carol",
        &common::token("carol", 600),
        "carol-cli",
        &send,
    );
    assert!(
        out.status.success(),
        "mosquitto_pub (5.0) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = bob.event().await;
    assert_eq!(ev["message"]["text"], "for bob only");
    assert_eq!(ev["message"]["from"], "carol");
    let (code, out, err) = tokio::task::spawn_blocking(move || spy.finish(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(
        !out.iter()
            .any(|l| l.starts_with('{') || l.contains("received PUBLISH")),
        "the spy received: {out:?}"
    );
    assert_eq!(code, Some(27), "expected the -W timeout; stderr: {err}");
}
