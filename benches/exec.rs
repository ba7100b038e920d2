//! The exec handler against `xargs -P 2 -n 1 true` over the same items, in
//! the same run, plus a bare two-thread spawn loop (the ceiling: no queue, no
//! pipes, no outcomes); and `lines → noop → SQLite` through the real binary.
//!
//! Run: `cargo bench --bench exec` (`LOTE_BENCH_JOBS` overrides the 5000 exec
//! jobs, `LOTE_BENCH_ITEMS` the 1M lines).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lote::commit::MemoryCommitter;
use lote::handler::exec::{ExecConfig, ExecHandler};
use lote::source::VecSource;
use lote::{Session, SessionConfig};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number")))
        .unwrap_or(default)
}

fn lote_exec(jobs: usize) -> Duration {
    let handler = ExecHandler::new(ExecConfig {
        command: vec!["true".into()],
        fatal_exit_codes: Vec::new(),
        output_limit: 64 * 1024,
        kill_grace: Duration::from_secs(5),
        env: Vec::new(),
        workdir: None,
    })
    .expect("true is on PATH");
    let source = Arc::new(VecSource::numbered(jobs));
    let committer = Arc::new(MemoryCommitter::new());
    let config = SessionConfig {
        threads: 2,
        chunk: 50,
        ..SessionConfig::default()
    };
    let started = Instant::now();
    let summary = Session::new(config, source, Arc::new(handler), committer)
        .run()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(summary.counts.done as usize, jobs, "{summary}");
    elapsed
}

fn xargs(jobs: usize) -> Duration {
    let input: String = (0..jobs).map(|i| format!("{i}\n")).collect();
    let started = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", "2", "-n", "1", "true"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("xargs is installed");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    started.elapsed()
}

fn bare_spawn_loop(jobs: usize) -> Duration {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    assert!(Command::new("true").status().unwrap().success());
                }
            });
        }
    });
    started.elapsed()
}

fn cli_lines_to_sqlite(items: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("items.txt");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&lines).unwrap());
    for i in 0..items {
        writeln!(file, "reading {i}").unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}\nlog: warn\nsession:\n  threads: 2\n  chunk: 500\nsource:\n  kind: lines\n  path: {}\nhandler:\n  kind: noop\nsink:\n  kind: sqlite\n  path: outcomes.db\n  batch: 5000\n",
            dir.path().join("state").display(),
            lines.display()
        ),
    )
    .unwrap();
    let lote = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/lote");
    let started = Instant::now();
    let output = Command::new(&lote)
        .args(["run", "--once", "-c", config.to_str().unwrap()])
        .output()
        .expect("target/release/lote: run `cargo build --release` first");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let conn = rusqlite::Connection::open(dir.path().join("state/outcomes.db")).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM outcomes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, items);
    elapsed
}

fn main() {
    let jobs = env_number("LOTE_BENCH_JOBS", 5000);
    let items = env_number("LOTE_BENCH_ITEMS", 1_000_000);
    println!("exec bench: {jobs} jobs of `true`, 2 at a time (best of 3)");
    let best = |f: &dyn Fn(usize) -> Duration| (0..3).map(|_| f(jobs)).min().unwrap();
    let rate = |elapsed: Duration| jobs as f64 / elapsed.as_secs_f64();
    let xargs = rate(best(&xargs));
    let lote = rate(best(&lote_exec));
    let bare = rate(best(&bare_spawn_loop));
    println!("{:<36} {:>12}", "case", "jobs/s");
    println!("{:<36} {:>12.0}", "xargs -P 2 -n 1 true", xargs);
    println!("{:<36} {:>12.0}", "lote exec handler, 2 threads", lote);
    println!("{:<36} {:>12.0}", "bare 2-thread spawn loop (ceiling)", bare);
    println!();
    println!("exec bench: lote = {:.2}× xargs (target ≥ 1.5×)", lote / xargs);

    let elapsed = cli_lines_to_sqlite(items);
    println!(
        "cli bench: lote run --once, lines → noop → sqlite, {items} items: {:.0} items/s ({:.2} s)",
        items as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
