//! `lote run` under a fake systemd: the test binds the `NOTIFY_SOCKET`
//! datagram socket itself, starts the real binary with `WATCHDOG_USEC`, and
//! reads what lote tells systemd — readiness, status lines, watchdog pings
//! at the right rate, stopping — and that the pings stop while a worker is
//! wedged past its timeout (the contract in `lote::notify`).
//!
//! Each lote runs in its own process group and is killed, with the handler
//! child it wedged, when its guard drops, so a failed assertion leaves
//! nothing running.

use std::fs::{self, File};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const LOTE: &str = env!("CARGO_BIN_EXE_lote");
/// 0.4 s: lote looks (and pings) every 0.2 s.
const WATCHDOG_USEC: &str = "400000";

/// The fake systemd end of `NOTIFY_SOCKET`: every line of every datagram,
/// with the time it arrived.
struct Systemd {
    path: PathBuf,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    done: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Systemd {
    fn listen(path: PathBuf) -> Systemd {
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (lines, done) = (Arc::clone(&lines), Arc::clone(&done));
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !done.load(Ordering::Relaxed) {
                    // A timeout just loops to look at `done`.
                    if let Ok(n) = socket.recv(&mut buf) {
                        let at = Instant::now();
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let mut lines = lines.lock().unwrap();
                        lines.extend(text.lines().map(|l| (at, l.to_string())));
                    }
                }
            })
        };
        Systemd {
            path,
            lines,
            done,
            reader: Some(reader),
        }
    }

    /// Lines starting with `prefix` that arrived in `[from, to)`.
    fn arrivals(&self, prefix: &str, from: Instant, to: Instant) -> Vec<(Instant, String)> {
        let lines = self.lines.lock().unwrap();
        let hits = lines
            .iter()
            .filter(|(at, l)| l.starts_with(prefix) && *at >= from && *at < to);
        hits.cloned().collect()
    }

    fn count(&self, line: &str, from: Instant, to: Instant) -> usize {
        self.arrivals(line, from, to).iter().filter(|(_, l)| l == line).count()
    }

    /// Waits up to `limit` for a line starting with `prefix`; its arrival.
    fn wait_for(&self, prefix: &str, limit: Duration) -> Instant {
        let started = Instant::now();
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            if let Some((at, _)) = self.arrivals(prefix, started - Duration::from_secs(3600), far).first() {
                return *at;
            }
            assert!(
                started.elapsed() < limit,
                "no {prefix:?} within {limit:?}; got {:?}",
                self.all()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A running lote; dropping it kills its process group and the wedged
/// handler child (which sits in a group of its own), if any.
struct Lote {
    child: Child,
    /// Where a wedging handler writes its pid.
    handler_pid: Option<PathBuf>,
}

impl Lote {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < limit, "lote did not exit within {limit:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lote {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let pid = self.handler_pid.as_ref().and_then(|p| fs::read_to_string(p).ok());
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A config over a spool of `items` files in `dir`, continuous (no `--once`).
fn config(dir: &Path, items: usize, handler: &str) -> PathBuf {
    let spool = dir.join("spool");
    fs::create_dir_all(&spool).unwrap();
    for i in 0..items {
        fs::write(spool.join(format!("item-{i:04}.txt")), format!("payload {i}\n")).unwrap();
    }
    let path = dir.join("config.yaml");
    let text = format!(
        "state_dir: {}\nlog: info\nsession:\n  threads: 2\nsource:\n  kind: spool\n  path: {}\n  stable_for: 0s\n\
         {handler}\nsink:\n  kind: sqlite\n  path: outcomes.db\n  flush_every: 50ms\n",
        dir.join("state").display(),
        spool.display()
    );
    fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, config: &Path, systemd: &Systemd) -> Lote {
    let log = File::create(dir.join("lote.log")).unwrap();
    let child = Command::new(LOTE)
        .arg("run")
        .arg("-c")
        .arg(config)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    Lote {
        child,
        handler_pid: None,
    }
}

fn log_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("lote.log")).unwrap_or_default()
}

#[test]
fn ready_status_watchdog_pings_then_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::listen(dir.path().join("notify.sock"));
    let config = config(
        dir.path(),
        6,
        "handler:\n  kind: exec\n  command: [\"sleep\", \"0.05\"]",
    );
    let mut lote = start(dir.path(), &config, &systemd);

    let ready = systemd.wait_for("READY=1", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1300));
    let window = ready + Duration::from_millis(1200);
    let pings = systemd.count("WATCHDOG=1", ready, window);
    assert!(
        (3..=24).contains(&pings),
        "{pings} pings in 1.2 s with WATCHDOG_USEC=0.4 s (expected about 6)\n{:?}",
        systemd.all()
    );
    let far = Instant::now() + Duration::from_secs(60);
    let statuses = systemd.arrivals("STATUS=", ready, far);
    assert!(
        statuses
            .iter()
            .any(|(_, l)| l.contains("items/s") && l.contains("writer depth")),
        "no running STATUS line: {statuses:?}"
    );
    assert_eq!(systemd.count("STOPPING=1", ready, far), 0, "stopping before a stop");

    let term = Instant::now();
    kill(lote.pid(), Signal::SIGTERM).unwrap();
    let code = lote.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", log_of(dir.path()));
    thread::sleep(Duration::from_millis(100)); // the reader's last datagrams
    let far = Instant::now() + Duration::from_secs(60);
    assert_eq!(
        systemd.count("STOPPING=1", term, far),
        1,
        "{:?}\n{}",
        systemd.all(),
        log_of(dir.path())
    );
    assert_eq!(systemd.count("READY=1", ready, far), 1);
}

#[test]
fn watchdog_pings_stop_while_a_worker_is_wedged_past_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::listen(dir.path().join("notify.sock"));
    let pid_file = dir.path().join("handler.pid");
    // Ignores the SIGTERM lote sends at the 200 ms timeout; SIGKILL would
    // come only after the 30 s kill_grace: the worker stays busy.
    let handler = format!(
        "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"echo $$ > {}; trap '' TERM; exec sleep 30\"]\n  \
         timeout: 200ms\n  kill_grace: 30s",
        pid_file.display()
    );
    let config = config(dir.path(), 1, &handler);
    let mut lote = start(dir.path(), &config, &systemd);
    lote.handler_pid = Some(pid_file.clone());

    let ready = systemd.wait_for("READY=1", Duration::from_secs(10));
    let started = Instant::now();
    while !pid_file.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "the handler never started");
        thread::sleep(Duration::from_millis(5));
    }
    let busy_from = Instant::now();
    thread::sleep(Duration::from_millis(3500));

    // Within the bound (timeout 200 ms + 1 s margin) the long call is fine.
    let early = systemd.count("WATCHDOG=1", ready, busy_from + Duration::from_millis(1000));
    assert!(
        early >= 3,
        "only {early} pings while the call was within its bound: {:?}",
        systemd.all()
    );
    // Past it (plus a tick and slack), no ping at all.
    let late = systemd.arrivals("WATCHDOG=1", busy_from + Duration::from_millis(1800), Instant::now());
    assert!(
        late.is_empty(),
        "{} pings while wedged (last {:?} after the call began)\n{}",
        late.len(),
        late.last().map(|(at, _)| at.duration_since(busy_from)),
        log_of(dir.path())
    );
    let far = Instant::now() + Duration::from_secs(60);
    let wedged = systemd.arrivals("STATUS=wedged:", busy_from, far);
    assert!(!wedged.is_empty(), "no wedged STATUS: {:?}", systemd.all());
    assert!(
        lote.child.try_wait().unwrap().is_none(),
        "lote exited: {}",
        log_of(dir.path())
    );
    assert!(log_of(dir.path()).contains("withholding WATCHDOG=1"));
    // `lote`'s drop kills it and the wedged child.
}

/// The `state` field of `state/status.json`, if the file reads.
fn status_file_state(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("state/status.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json["state"].as_str()?.to_string())
}

#[test]
fn status_says_stopping_not_running_while_the_item_in_hand_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::listen(dir.path().join("notify.sock"));
    let started_file = dir.path().join("handler.started");
    let release_file = dir.path().join("handler.release");
    // One item whose handler runs until the test releases it (at most 20 s),
    // so the stop's window cannot close before the test has looked, however
    // slow the machine; metrics.every stays at its 15 s default, so only the
    // stop itself can make the status file change.
    let handler = format!(
        "handler:\n  kind: exec\n  command: [\"/bin/sh\", \"-c\", \"touch {}; i=0; \
         while [ ! -e {} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; cat\"]",
        started_file.display(),
        release_file.display()
    );
    let config = config(dir.path(), 1, &handler);
    let mut lote = start(dir.path(), &config, &systemd);
    systemd.wait_for("READY=1", Duration::from_secs(10));
    let waited = Instant::now();
    while !started_file.exists() {
        assert!(waited.elapsed() < Duration::from_secs(10), "the handler never started");
        thread::sleep(Duration::from_millis(10));
    }
    systemd.wait_for("STATUS=running", Duration::from_secs(5));

    let term = Instant::now();
    kill(lote.pid(), Signal::SIGTERM).unwrap();
    let mut file_states = Vec::new();
    let code = loop {
        if let Some(status) = lote.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(term.elapsed() < Duration::from_secs(30), "lote did not stop");
        if let Some(state) = status_file_state(dir.path()) {
            if file_states.last() != Some(&state) {
                file_states.push(state);
            }
        }
        // Let the item in hand finish once the stop has shown in the file and
        // in STATUS= and a second has passed (or after 10 s, so that a lote that never says stopping fails the
        // assertions below instead of hanging the test).
        let shown = file_states.iter().any(|s| s == "stopping")
            && !systemd
                .arrivals("STATUS=stopping |", term, term + Duration::from_secs(60))
                .is_empty();
        if !release_file.exists()
            && ((shown && term.elapsed() >= Duration::from_secs(1)) || term.elapsed() >= Duration::from_secs(10))
        {
            fs::write(&release_file, b"").unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "{}", log_of(dir.path()));
    file_states.extend(status_file_state(dir.path()));
    assert!(
        term.elapsed() >= Duration::from_secs(1),
        "the item in hand was cut short"
    );
    thread::sleep(Duration::from_millis(100)); // the reader's last datagrams
                                               // A look of the notify thread that began just before the signal may
                                               // still land; anything later must not say running.
    let far = Instant::now() + Duration::from_secs(60);
    let after = systemd.arrivals("STATUS=", term + Duration::from_millis(200), far);
    let running: Vec<_> = after.iter().filter(|(_, l)| l.starts_with("STATUS=running")).collect();
    assert!(running.is_empty(), "STATUS= said running during the stop: {after:?}");
    assert!(
        after.iter().any(|(_, l)| l.starts_with("STATUS=stopping |")),
        "no stopping STATUS line with the counters while the item finished: {after:?}"
    );
    assert!(
        file_states.iter().any(|s| s == "stopping"),
        "status.json never said stopping: {file_states:?}"
    );
    assert_eq!(
        file_states.last().map(String::as_str),
        Some("stopped"),
        "{file_states:?}"
    );
}
