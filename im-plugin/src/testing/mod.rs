//! Test support shared by this crate's tests and the end-to-end suite: a real `redis-server`
//! started on a free loopback port, killed when dropped; without persistence, or with an RDB file
//! in a temp dir that only explicit snapshots write (so a restart comes back at that snapshot).
//!
//! Not used by the broker itself. `scripts/test` installs `redis-server` from Debian's packages;
//! without it, starting one panics with that advice rather than letting a test pass unchecked.

#[cfg(test)]
pub(crate) mod nodes;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Where the RDB file lives, for a server started with [`RedisServer::start_with_snapshots`].
    dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a fresh, empty Redis on a free port and waits until it accepts connections.
    pub fn start() -> RedisServer {
        Self::start_in(None)
    }

    /// Like [`RedisServer::start`], with an RDB file in a temp dir: [`RedisServer::snapshot`]
    /// writes it, and [`RedisServer::restart`] comes back with what it holds (nothing else is
    /// ever saved), as a production Redis with `save` on comes back after a crash.
    pub fn start_with_snapshots() -> RedisServer {
        Self::start_in(Some(tempfile::TempDir::new().expect("temp dir for redis")))
    }

    fn start_in(dir: Option<tempfile::TempDir>) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, dir.as_ref().map(|d| d.path())) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("could not start redis-server on a free port (5 attempts)");
    }

    /// Runs one command on a connection of its own and returns the reply's first line
    /// (`+OK`, `:1`, `-ERR ...`).
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{BufRead as _, BufReader, Write as _};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).expect("write to redis");
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .expect("read from redis");
        line.trim_end().to_string()
    }

    /// Writes the RDB snapshot now (`SAVE`). Panics without [`RedisServer::start_with_snapshots`].
    pub fn snapshot(&self) {
        assert!(self.dir.is_some(), "this redis-server keeps no snapshots");
        let answer = self.command(&["SAVE"]);
        assert_eq!(answer, "+OK", "SAVE answered {answer}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills Redis (SIGKILL: nothing is saved, and it keeps no data files anyway).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port: empty, what a Redis without persistence looks like
    /// after a crash; or, with snapshots, with what the last [`RedisServer::snapshot`] saved.
    /// Panics if the port was taken meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = spawn(self.port, self.dir.as_ref().map(|d| d.path())) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Starts `redis-server` on `port` (loading `dir/dump.rdb` if given and present); `None` if it
/// exits (port taken) before accepting connections.
fn spawn(port: u16, dir: Option<&std::path::Path>) -> Option<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"]);
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir).args(["--dbfilename", "dump.rdb"]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): install it (`scripts/test` does: apt-get install redis-server)")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // the port was taken
        }
        if answers_ping(port) {
            // Still ours: another process on the port would have made this one exit.
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(None) = child.try_wait() {
                return Some(child);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn answers_ping(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}
