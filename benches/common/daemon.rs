//! The real daemon under a bench: `target/release/lote run` over a
//! temporary state directory, and a keep-alive HTTP/1.1 client that speaks
//! just enough to post items to its listener (no client library measured
//! instead of lote).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn lote_binary() -> PathBuf {
    let lote = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/lote");
    assert!(lote.exists(), "{}: run `cargo build --release` first", lote.display());
    lote
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where a client connects.
#[derive(Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// One keep-alive connection speaking just enough HTTP/1.1.
pub enum Stream {
    Tcp(BufReader<TcpStream>),
    Unix(BufReader<UnixStream>),
}

impl Stream {
    pub fn connect(target: &Target) -> Stream {
        match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                Stream::Tcp(BufReader::new(s))
            }
            Target::Unix(path) => Stream::Unix(BufReader::new(UnixStream::connect(path).unwrap())),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.get_mut().write_all(bytes),
            Stream::Unix(s) => s.get_mut().write_all(bytes),
        }
    }

    fn reader(&mut self) -> &mut dyn BufRead {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    /// Sends one request and reads the answer; returns its status code.
    pub fn request(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: lote\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.write_all(&request).unwrap();
        let reader = self.reader();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        code
    }
}

/// A running daemon over a temporary directory.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// `lote run` with `config` (everything but `state_dir`, which is the
    /// temporary directory's `state/`); back once status.json is written.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let state = dir.path().join("state");
        fs::write(&path, format!("state_dir: {}\n{config}", state.display())).unwrap();
        let child = Command::new(lote_binary())
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, dir };
        let started = Instant::now();
        while !daemon.state().join("status.json").exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "the daemon did not start");
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
        daemon
    }

    /// Its state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then the time until the process ended; `None` if it was
    /// still running after `limit` (it is then sent a second SIGTERM, the
    /// hurry, and waited for).
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let asked = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if asked.elapsed() > limit {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let _ = self.child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
        Some(asked.elapsed())
    }
}

impl Drop for Daemon {
    /// SIGTERM; a second one (hurry: exec children killed) if the first
    /// has not ended it within 3 s.
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}
