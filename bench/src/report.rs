//! Results: the per-scenario tables, run metadata, and `BENCHMARKS.md`.
//!
//! This file owns how numbers are shown (one table per scenario: metric, mqim, Mosquitto,
//! mqim/Mosquitto; one row per mqim store shape where a scenario compares them), the run metadata every section carries (date, git commit, command line,
//! machine), and the regeneration of `BENCHMARKS.md`: a fixed header followed by one
//! marker-delimited "latest run" block per scenario; a run replaces the blocks of the scenarios it
//! ran and keeps the others as they were.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Scenario ids, in file order.
pub const SCENARIOS: [(&str, &str); 6] = [
    ("idle", "1. Idle connections"),
    ("throughput", "2. Throughput"),
    ("latency", "3. Latency (open loop)"),
    ("storm", "4. Reconnect storm"),
    ("fanout", "5. Group fan-out"),
    (
        "drain",
        "6. Drain to another node (the storm's drain variant)",
    ),
];

/// One value in a table.
#[derive(Clone, Debug)]
pub enum Cell {
    Num { value: f64, decimals: usize },
    Text(String),
    Missing,
}

impl Cell {
    fn value(&self) -> Option<f64> {
        match self {
            Cell::Num { value, .. } => Some(*value),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Num { value, decimals } => fmt_num(*value, *decimals),
            Cell::Text(t) => t.clone(),
            Cell::Missing => "—".into(),
        }
    }
}

/// Formats with thousands separators.
pub fn fmt_num(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let s = format!("{:.*}", decimals, value.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if value < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// One table row.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub mqim: Cell,
    pub mosquitto: Cell,
    pub ratio: Option<f64>,
}

impl Row {
    /// A numeric row; the ratio mqim/Mosquitto is filled in when both sides have a value.
    pub fn num(metric: &str, mqim: Option<f64>, mosquitto: Option<f64>, decimals: usize) -> Row {
        let ratio = match (mqim, mosquitto) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
            _ => None,
        };
        let cell = |v: Option<f64>| match v {
            Some(value) => Cell::Num { value, decimals },
            None => Cell::Missing,
        };
        Row {
            metric: metric.into(),
            mqim: cell(mqim),
            mosquitto: cell(mosquitto),
            ratio,
        }
    }

    /// An integer row without a ratio (counts whose ratio means nothing).
    pub fn count(metric: &str, mqim: Option<f64>, mosquitto: Option<f64>) -> Row {
        Row::plain(metric, mqim, mosquitto, 0)
    }

    /// A numeric row without a ratio (context values whose ratio means nothing).
    pub fn plain(metric: &str, mqim: Option<f64>, mosquitto: Option<f64>, decimals: usize) -> Row {
        Row {
            ratio: None,
            ..Row::num(metric, mqim, mosquitto, decimals)
        }
    }

    pub fn text(metric: &str, mqim: Option<String>, mosquitto: Option<String>) -> Row {
        Row {
            metric: metric.into(),
            mqim: mqim.map_or(Cell::Missing, Cell::Text),
            mosquitto: mosquitto.map_or(Cell::Missing, Cell::Text),
            ratio: None,
        }
    }
}

/// The result of one scenario over both brokers.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub id: &'static str,
    pub params: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// What went wrong (a broker did not serve, a send was not delivered, ...). Non-empty makes
    /// the run exit non-zero.
    pub problems: Vec<String>,
    /// Shown but not counted as a failure (e.g. the mqim binary does not exist yet).
    pub warnings: Vec<String>,
}

impl Section {
    pub fn new(id: &'static str) -> Section {
        Section {
            id,
            ..Default::default()
        }
    }

    pub fn param(&mut self, name: &str, value: impl ToString) {
        self.params.push((name.into(), value.to_string()));
    }

    pub fn title(&self) -> &'static str {
        SCENARIOS
            .iter()
            .find(|(id, _)| *id == self.id)
            .map_or("?", |(_, t)| t)
    }

    /// The markdown block of this section (without the markers).
    pub fn render(&self, run: &RunInfo) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## {}\n", self.title());
        let _ = writeln!(s, "Latest run: {} · commit `{}`  ", run.date, run.commit);
        let _ = writeln!(s, "Command: `{}`  ", run.command);
        let _ = writeln!(s, "Machine: {}  ", run.machine);
        let _ = writeln!(s, "Brokers: {}", run.brokers);
        if !self.params.is_empty() {
            let p: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let _ = writeln!(s, "\nParameters: {}", p.join(", "));
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| metric | mqim | Mosquitto | mqim / Mosquitto |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for r in &self.rows {
            let ratio = r.ratio.map_or(String::new(), |x| format!("{x:.2}×"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                r.metric,
                r.mqim.render(),
                r.mosquitto.render(),
                ratio
            );
        }
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|p| format!("**Problem:** {p}"))
            .chain(self.warnings.iter().map(|w| format!("**Warning:** {w}")))
            .chain(self.notes.iter().cloned())
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(s);
            for l in lines {
                let l = l.replace('\n', "\n  ");
                let _ = writeln!(s, "- {l}");
            }
        }
        s
    }
}

/// Adds the rows of several mqim store shapes to `sec`, metric by metric: each metric gets one
/// row per store shape, tagged with it and with its own ratio against the same Mosquitto value.
/// `per_store` holds each shape's rows, all built by the same code (so in the same order). With
/// two or more shapes, a note gives every later shape's ratios to the first one.
pub fn add_store_rows(sec: &mut Section, per_store: &[(String, Vec<Row>)]) {
    let metrics = per_store.first().map_or(0, |(_, rows)| rows.len());
    for m in 0..metrics {
        for (store, rows) in per_store {
            sec.rows.push(Row {
                metric: format!("{} · `{store}`", rows[m].metric),
                ..rows[m].clone()
            });
        }
    }
    let Some((base, base_rows)) = per_store.first() else {
        return;
    };
    for (store, rows) in &per_store[1..] {
        let ratios: Vec<String> = base_rows
            .iter()
            .zip(rows)
            .filter(|(b, _)| b.ratio.is_some())
            .filter_map(|(b, r)| match (b.mqim.value(), r.mqim.value()) {
                (Some(x), Some(y)) if x != 0.0 => {
                    let name = b.metric.replace("**", "");
                    let name = name
                        .trim_end_matches(" (lower is better)")
                        .trim_end_matches(" (higher is better)");
                    Some(format!("{name} {:.2}×", y / x))
                }
                _ => None,
            })
            .collect();
        if !ratios.is_empty() {
            sec.notes.push(format!(
                "mqim `{store}` / mqim `{base}`, same run: {}.",
                ratios.join("; ")
            ));
        }
    }
}

/// What every section says about the run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub command: String,
    pub machine: String,
    pub brokers: String,
}

impl RunInfo {
    pub fn collect(root: &Path, brokers: String) -> RunInfo {
        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
        let command = if args.is_empty() {
            "cargo run --release -p mqim-bench".to_string()
        } else {
            format!("cargo run --release -p mqim-bench -- {}", args.join(" "))
        };
        RunInfo {
            date: utc_now(),
            commit: git_commit(root),
            command,
            machine: machine(),
            brokers,
        }
    }
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn git_commit(root: &Path) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}

/// "2 CPUs (model), 23.4 GiB RAM, Linux 6.x".
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpus} CPUs (nproc; {model}), {:.1} GiB RAM (MemTotal), Linux {kernel}",
        mem_kib as f64 / (1024.0 * 1024.0)
    )
}

/// Current UTC time as "YYYY-MM-DD HH:MM:SS UTC".
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

const HEADER: &str = "# mqim benchmarks

Generated by `mqim-bench` (the `bench/` crate); do not edit by hand: every run regenerates the
block of each scenario it ran and keeps the others.

Each scenario runs mqim and Mosquitto back to back in the same run, with the same load generator
(a minimal hand-rolled MQTT 3.1.1 client on tokio, in the same process as the harness), on the same
machine. The machine is small (2 cores, shared by broker and load generator) and noisy, so the
numbers to read are the **mqim / Mosquitto ratios**, not the absolute values.

- mqim: `target/release/mqim serve`, fresh data dir per instance, HS256 JWT auth (username =
  user id, password = token). A send is a request on `im/U/C/up/json`, acknowledged by the `sent`
  reply; it is delivered when the recipient's device gets the event on `im/R/D/down/json`.
- mqim store shapes (`--stores`, default both): `embedded` keeps everything in the data dir (the
  durable fjall store with its default fsync policy); `redis+embedded` keeps seq counters, the
  unread index and the dedup cache in a `redis-server` the harness starts for each mqim instance
  (loopback, no persistence, stopped with the broker) and the message log in the data dir.
  Throughput and latency run mqim once per store shape and Mosquitto once: each store shape has its
  own rows, each with its ratio against the same Mosquitto run, and a note gives
  `redis+embedded` / `embedded` (the cost of the Redis hop, same machine, same run). Idle
  connections and the reconnect storm run mqim on the embedded store only.
- Mosquitto: started by the harness with a generated config (loopback listener, anonymous,
  persistence off). A send is a bare QoS 1 PUBLISH of the same JSON bytes straight to the
  recipient's downlink topic, acknowledged by PUBACK. Mosquitto does much less work per message
  (no auth token check, no storage, no sequence numbers, no reply), so it is the yardstick, not a
  like-for-like competitor.

Run everything: `cargo run --release -p mqim-bench -- all` (or `idle`, `throughput`, `latency`,
`storm`, `fanout`, `drain`; `--help` for the knobs). `--quick` runs tiny versions and prints to stdout only.

Where mqim's time and memory go, with the profiles behind it: [`bench/PROFILE.md`](bench/PROFILE.md).
";

fn begin_marker(id: &str) -> String {
    format!("<!-- mqim-bench:{id}:begin -->")
}

fn end_marker(id: &str) -> String {
    format!("<!-- mqim-bench:{id}:end -->")
}

/// The block of scenario `id` currently in `text`, if any (between the markers, exclusive).
fn existing_block<'a>(text: &'a str, id: &str) -> Option<&'a str> {
    let b = begin_marker(id);
    let e = end_marker(id);
    let start = text.find(&b)? + b.len();
    let end = start + text[start..].find(&e)?;
    Some(text[start..end].trim_matches('\n'))
}

/// Rebuilds the whole file: header, then per scenario either the new block or the old one.
pub fn merge(existing: &str, sections: &[Section], run: &RunInfo) -> String {
    let mut out = String::from(HEADER);
    for (id, title) in SCENARIOS {
        let block = match sections.iter().find(|s| s.id == id) {
            Some(s) => s.render(run).trim_end().to_string(),
            None => match existing_block(existing, id) {
                Some(old) => old.to_string(),
                None => format!("## {title}\n\nNot run yet."),
            },
        };
        let _ = write!(
            out,
            "\n{}\n{}\n{}\n",
            begin_marker(id),
            block,
            end_marker(id)
        );
    }
    out
}

/// Writes `sections` into the markdown file at `path`.
pub fn write_file(path: &Path, sections: &[Section], run: &RunInfo) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = merge(&existing, sections, run);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
            date: "2025-01-01 00:00:00 UTC".into(),
            commit: "abc1234".into(),
            command: "cargo run --release -p mqim-bench -- all".into(),
            machine: "2 CPUs".into(),
            brokers: "x".into(),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234567.891, 2), "1,234,567.89");
        assert_eq!(fmt_num(12.0, 0), "12");
        assert_eq!(fmt_num(-1234.5, 1), "-1,234.5");
        assert_eq!(fmt_num(0.5, 2), "0.50");
    }

    #[test]
    fn store_rows_interleave_per_metric() {
        let rows = |rate: f64| {
            vec![
                Row::num("**msg/s**", Some(rate), Some(100.0), 0),
                Row::count("errors", Some(0.0), Some(0.0)),
            ]
        };
        let mut sec = Section::new("throughput");
        add_store_rows(
            &mut sec,
            &[
                ("embedded".into(), rows(50.0)),
                ("redis+embedded".into(), rows(25.0)),
            ],
        );
        let text = sec.render(&run());
        assert!(text.contains(
            "| **msg/s** · `embedded` | 50 | 100 | 0.50× |\n\
             | **msg/s** · `redis+embedded` | 25 | 100 | 0.25× |\n\
             | errors · `embedded` | 0 | 0 |  |\n"
        ));
        assert!(text.contains("- mqim `redis+embedded` / mqim `embedded`, same run: msg/s 0.50×."));
    }

    #[test]
    fn merge_replaces_only_the_sections_run() {
        let mut idle = Section::new("idle");
        idle.rows.push(Row::num(
            "RSS per connection (KiB)",
            Some(4.0),
            Some(2.0),
            1,
        ));
        let first = merge("", &[idle], &run());
        assert!(first.contains("| RSS per connection (KiB) | 4.0 | 2.0 | 2.00× |"));
        assert!(first.contains("## 2. Throughput\n\nNot run yet."));

        let mut tp = Section::new("throughput");
        tp.rows
            .push(Row::num("delivered msg/s", Some(10.0), None, 0));
        let second = merge(&first, &[tp], &run());
        assert!(second.contains("| RSS per connection (KiB) | 4.0 | 2.0 | 2.00× |"));
        assert!(second.contains("| delivered msg/s | 10 | — |  |"));
        assert!(!second.contains("Not run yet.\n<!-- mqim-bench:throughput:end"));
        // Idempotent apart from the regenerated blocks.
        assert_eq!(merge(&second, &[], &run()), second);
    }
}
