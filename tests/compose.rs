//! The handler tree (SPEC §3.13, seed 004) through the real binary: seed
//! 004's four examples as configs against real exec scripts and a real HTTP
//! server on 127.0.0.1 (tiny_http, many threads, counting calls and calls
//! at once per path), the policies on nodes (bulkhead, fallback, cache),
//! per-node metrics, and durable partial progress under `exactly_once`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{text, Setup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How the server answers one request: (status, delay, body).
type Route = dyn Fn(&str, &str) -> (u16, Duration, String) + Send + Sync;

/// Per path: calls so far, calls running now, the most at once.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    calls: usize,
    now: usize,
    most: usize,
}

/// An HTTP server on 127.0.0.1 with 16 threads, answering with `route`.
struct Upstream {
    base: String,
    load: Arc<Mutex<HashMap<String, Load>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Upstream {
    fn start(route: impl Fn(&str, &str) -> (u16, Duration, String) + Send + Sync + 'static) -> Upstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let base = format!("http://{}", server.server_addr().to_ip().unwrap());
        let load: Arc<Mutex<HashMap<String, Load>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let route: Arc<Route> = Arc::new(route);
        let threads = (0..16)
            .map(|_| {
                let (server, load, stop, route) = (server.clone(), load.clone(), stop.clone(), route.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                            continue;
                        };
                        let path = request.url().to_string();
                        let mut body = String::new();
                        let _ = request.as_reader().read_to_string(&mut body);
                        {
                            let mut load = load.lock().unwrap();
                            let l = load.entry(path.clone()).or_default();
                            l.calls += 1;
                            l.now += 1;
                            l.most = l.most.max(l.now);
                        }
                        let (status, delay, answer) = route(&path, &body);
                        thread::sleep(delay);
                        load.lock().unwrap().get_mut(&path).unwrap().now -= 1;
                        let _ = request.respond(tiny_http::Response::from_string(answer).with_status_code(status));
                    }
                })
            })
            .collect();
        Upstream {
            base,
            load,
            stop,
            threads,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn load(&self, path: &str) -> Load {
        self.load.lock().unwrap().get(path).copied().unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One outcome row: status, attempts, output, error, duration_ms.
#[derive(Clone, Debug)]
struct Row {
    status: String,
    attempts: i64,
    output: Option<String>,
    error: Option<String>,
    duration_ms: i64,
}

impl Setup {
    /// An executable `sh` script in the temp dir.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A script that notes each call in `<name>.log` and answers `answer`.
    fn logged(&self, name: &str, answer: &str) -> PathBuf {
        let log = self.path(&format!("{name}.log"));
        self.script(name, &format!("echo call >> {}; echo {answer}", log.display()))
    }

    /// Items in the spool, one file each.
    fn spool(&self, items: &[(&str, &str)]) {
        fs::create_dir_all(self.path("spool")).unwrap();
        for (name, payload) in items {
            fs::write(self.path(&format!("spool/{name}")), payload).unwrap();
        }
    }

    /// `config.yaml`: the spool, `handler` as given, SQLite outcomes.
    fn tree(&self, handler: &str) {
        self.config(&format!(
            "session: {{threads: 8}}\nsource: {{kind: spool, path: {}, stable_for: 0s}}\n{handler}\n\
             sink: {{kind: sqlite, path: outcomes.db}}\nmetrics: {{textfile: lote.prom}}\n",
            self.path("spool").display()
        ));
    }

    fn run_once(&self) {
        let out = self.run(&["run", "--once", "-c", "config.yaml"]);
        assert!(out.status.success(), "{}", text(&out));
    }

    fn rows(&self) -> HashMap<String, Row> {
        let conn = rusqlite::Connection::open(self.path("state/outcomes.db")).unwrap();
        let mut statement = conn
            .prepare("SELECT id, status, attempts, output, error, duration_ms FROM outcomes")
            .unwrap();
        let rows = statement
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Row {
                        status: r.get(1)?,
                        attempts: r.get(2)?,
                        output: r.get(3)?,
                        error: r.get(4)?,
                        duration_ms: r.get(5)?,
                    },
                ))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// The status file's per-node counters, by path.
    fn nodes(&self) -> HashMap<String, serde_json::Value> {
        let status: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(self.path("state/status.json")).unwrap()).unwrap();
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["path"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn seed_004_dashboard_in_parallel_takes_the_slowest_branch_not_the_sum() {
    let up = Upstream::start(|path, _| match path {
        "/sales" => (200, Duration::from_millis(200), r#"{"total":120}"#.to_string()),
        _ => (200, Duration::from_millis(200), "in stock".to_string()),
    });
    let setup = Setup::new();
    let behavior = setup.script("behavior", "sleep 0.2; echo '{\"premium\": 42}'");
    setup.spool(&[("today", "{\"day\":\"2026-12-03\"}")]);
    setup.tree(&format!(
        "handler:\n  kind: parallel\n  branches:\n    sales: {{kind: http, url: \"{}\", timeout: 2s}}\n    \
         behavior: {{kind: exec, command: [\"{}\"]}}\n    inventory: {{kind: http, url: \"{}\"}}\n",
        up.url("/sales"),
        behavior.display(),
        up.url("/stock")
    ));
    let check = setup.run(&["check", "-c", "config.yaml"]);
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("handler.branches.behavior (exec)"),
        "{}",
        text(&check)
    );
    setup.run_once();
    let row = setup.rows()["today"].clone();
    assert_eq!(row.status, "done", "{row:?}");
    assert_eq!(
        json(row.output.as_deref().unwrap()),
        json(r#"{"sales":{"total":120},"behavior":{"premium":42},"inventory":"in stock"}"#)
    );
    // Three 200 ms branches at once: the slowest, not the sum (600 ms).
    assert!(row.duration_ms <= 260, "took {} ms", row.duration_ms);
    let nodes = setup.nodes();
    for path in [
        "handler",
        "handler.branches.sales",
        "handler.branches.behavior",
        "handler.branches.inventory",
    ] {
        assert_eq!(nodes[path]["calls"], 1, "{path}: {nodes:?}");
    }
    let prom = fs::read_to_string(setup.path("state/lote.prom")).unwrap();
    assert!(
        prom.contains("lote_node_calls_total{node=\"handler.branches.sales\"} 1"),
        "{prom}"
    );
    common::promtool_check_metrics(&setup.path("state/lote.prom"));
}

#[test]
fn a_failed_optional_branch_gives_null_and_a_failed_required_one_fails_the_item() {
    let up = Upstream::start(|path, body| match (path, body.contains("bad")) {
        ("/required", true) => (422, Duration::ZERO, "no such customer".to_string()),
        ("/required", false) => (200, Duration::ZERO, "[1,2]".to_string()),
        _ => (503, Duration::ZERO, "down".to_string()),
    });
    let setup = Setup::new();
    setup.spool(&[("good", "{\"c\":\"ok\"}"), ("bad", "{\"c\":\"bad\"}")]);
    setup.tree(&format!(
        "handler:\n  kind: parallel\n  retry: {{attempts: 1}}\n  branches:\n    \
         required: {{kind: http, url: \"{}\"}}\n    extra: {{kind: http, url: \"{}\", optional: true}}\n",
        up.url("/required"),
        up.url("/extra")
    ));
    let out = setup.run(&["run", "--once", "-c", "config.yaml"]);
    assert_eq!(out.status.code(), Some(3), "an item failed: {}", text(&out));
    let rows = setup.rows();
    assert_eq!(rows["good"].status, "done", "{rows:?}");
    assert_eq!(
        json(rows["good"].output.as_deref().unwrap()),
        json(r#"{"required":[1,2],"extra":null}"#)
    );
    assert_eq!(rows["bad"].status, "failed", "{rows:?}");
    assert!(
        rows["bad"].error.as_deref().unwrap().contains("branch required"),
        "{rows:?}"
    );
    let dead = fs::read_to_string(setup.path("state/dead-letter.jsonl")).unwrap();
    assert!(dead.contains("\"bad\""), "{dead}");
}

#[test]
fn seed_004_order_lookup_in_sequence_feeds_each_step_the_last_output() {
    let up = Upstream::start(|path, body| {
        let order = json(body);
        match path {
            "/inventory" => (
                200,
                Duration::ZERO,
                format!("{{\"product\":{},\"in_stock\":true}}", order["product"]),
            ),
            _ => (
                200,
                Duration::ZERO,
                format!("{{\"order\":{},\"status\":\"shipped\"}}", order["order"]),
            ),
        }
    });
    let setup = Setup::new();
    let details = setup.script(
        "order-details",
        "read order; echo \"{\\\"order\\\": $order, \\\"product\\\": \\\"p-$order\\\"}\"",
    );
    setup.spool(&[("o7", "7")]);
    setup.tree(&format!(
        "handler:\n  kind: sequence\n  steps:\n    - {{kind: exec, command: [\"{}\"]}}\n    - kind: parallel\n      \
         branches:\n        order: {{kind: exec, command: [cat]}}\n        inventory: {{kind: http, url: \"{}\"}}\n        \
         shipping: {{kind: http, url: \"{}\"}}\n",
        details.display(),
        up.url("/inventory"),
        up.url("/shipping")
    ));
    setup.run_once();
    let row = setup.rows()["o7"].clone();
    assert_eq!(row.status, "done", "{row:?}");
    assert_eq!(
        json(row.output.as_deref().unwrap()),
        json(
            r#"{"order":{"order":7,"product":"p-7"},"inventory":{"product":"p-7","in_stock":true},
                "shipping":{"order":7,"status":"shipped"}}"#
        )
    );
}

#[test]
fn seed_004_top_customers_fanned_out_keep_input_order_within_max_parallel() {
    // Lower ids answer later, so completions come out of order.
    let up = Upstream::start(|_, body| {
        let id: u64 = body.trim().parse().unwrap();
        (
            200,
            Duration::from_millis(20 * (11 - id)),
            format!("{{\"customer\":{id},\"score\":{}}}", id * 10),
        )
    });
    let setup = Setup::new();
    let top = setup.script("top-customers", "cat >/dev/null; echo '[3,1,4,10,5,9,2,6,8,7]'");
    setup.spool(&[("week", "{}")]);
    setup.tree(&format!(
        "handler:\n  kind: sequence\n  steps:\n    - {{kind: exec, command: [\"{}\"]}}\n    - kind: fan_out\n      \
         split: \"\"\n      max_parallel: 3\n      each: {{kind: http, url: \"{}\"}}\n",
        top.display(),
        up.url("/behavior")
    ));
    setup.run_once();
    let row = setup.rows()["week"].clone();
    assert_eq!(row.status, "done", "{row:?}");
    let ids: Vec<u64> = json(row.output.as_deref().unwrap())
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["customer"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [3, 1, 4, 10, 5, 9, 2, 6, 8, 7]);
    let load = up.load("/behavior");
    assert_eq!(load.calls, 10);
    assert!(load.most <= 3, "{load:?}");
    assert!(load.most >= 2, "the elements ran one at a time: {load:?}");
}

#[test]
fn seed_004_cached_lookup_calls_the_upstream_once_per_key() {
    let up = Upstream::start(|_, body| {
        let rate = if body.contains("EUR") { "1.08" } else { "0.0067" };
        (200, Duration::from_millis(100), rate.to_string())
    });
    let setup = Setup::new();
    let items: Vec<(String, String)> = (0..40)
        .map(|i| {
            let currency = if i % 2 == 0 { "EUR" } else { "JPY" };
            (format!("i{i:02}"), format!("{{\"currency\":\"{currency}\",\"n\":{i}}}"))
        })
        .collect();
    let items: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    setup.spool(&items);
    setup.tree(&format!(
        "handler:\n  kind: http\n  url: \"{}\"\n  cache: {{ttl: 60s, key: \"{{/currency}}\", max_entries: 100}}\n",
        up.url("/rates")
    ));
    setup.run_once();
    let rows = setup.rows();
    assert_eq!(rows.len(), 40);
    assert!(rows.values().all(|r| r.status == "done"), "{rows:?}");
    assert_eq!(rows["i00"].output.as_deref(), Some("1.08"));
    assert_eq!(rows["i01"].output.as_deref(), Some("0.0067"));
    // Eight workers miss at once on two keys: still one call per key.
    assert_eq!(up.load("/rates").calls, 2);
    let node = &setup.nodes()["handler"];
    assert_eq!(
        node["cache_misses"].as_u64().unwrap() + node["cache_hits"].as_u64().unwrap(),
        40,
        "{node}"
    );
}

#[test]
fn a_bulkhead_rejects_beyond_its_room_and_retries_finish_every_item() {
    let up = Upstream::start(|_, _| (200, Duration::from_millis(50), "ok".to_string()));
    let setup = Setup::new();
    let items: Vec<(String, String)> = (0..12).map(|i| (format!("i{i:02}"), i.to_string())).collect();
    let items: Vec<(&str, &str)> = items.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    setup.spool(&items);
    setup.tree(&format!(
        "handler:\n  kind: parallel\n  branches:\n    slow:\n      kind: http\n      url: \"{}\"\n      \
         bulkhead: {{max_parallel: 2, max_queued: 1}}\n      retry: {{attempts: 50, backoff: 20ms, max_backoff: 50ms}}\n",
        up.url("/slow")
    ));
    let started = Instant::now();
    setup.run_once();
    assert!(started.elapsed() < Duration::from_secs(30));
    let rows = setup.rows();
    assert_eq!(rows.len(), 12);
    assert!(rows.values().all(|r| r.status == "done"), "{rows:?}");
    assert_eq!(up.load("/slow").most, 2, "the bulkhead let more through");
    let node = &setup.nodes()["handler.branches.slow"];
    assert!(node["bulkhead_rejected"].as_u64().unwrap() > 0, "{node}");
}

#[test]
fn a_fallback_answers_once_the_retries_are_exhausted() {
    let up = Upstream::start(|_, _| (503, Duration::ZERO, "down".to_string()));
    let setup = Setup::new();
    setup.spool(&[("a", "1"), ("b", "2")]);
    setup.tree(&format!(
        "handler:\n  kind: http\n  url: \"{}\"\n  retry: {{attempts: 3, backoff: 10ms}}\n  \
         fallback: {{value: '{{\"stale\": true}}'}}\n",
        up.url("/price")
    ));
    setup.run_once();
    let rows = setup.rows();
    for id in ["a", "b"] {
        assert_eq!(rows[id].status, "done", "{rows:?}");
        assert_eq!(rows[id].output.as_deref(), Some("{\"stale\": true}"));
    }
    assert_eq!(up.load("/price").calls, 6, "3 attempts per item, then the fallback");
    let node = &setup.nodes()["handler"];
    assert_eq!(node["fallbacks"], 2, "{node}");
    assert_eq!(node["failures"], 6, "{node}");
}

#[test]
fn under_exactly_once_a_retry_calls_only_the_branches_that_did_not_answer() {
    let setup = Setup::new();
    let sales = setup.logged("sales", "1");
    // Fails on its first call, answers afterwards.
    let stock = setup.script(
        "stock",
        &format!(
            "echo call >> {log}; [ -e {mark} ] || {{ touch {mark}; exit 1; }}; echo 2",
            log = setup.path("stock.log").display(),
            mark = setup.path("stock.mark").display()
        ),
    );
    let each = setup.script(
        "each",
        &format!(
            "read x; echo $x >> {log}; [ $x = 2 ] && [ ! -e {mark} ] && {{ touch {mark}; exit 1; }}; echo $((x*10))",
            log = setup.path("each.log").display(),
            mark = setup.path("each.mark").display()
        ),
    );
    setup.spool(&[("item", "[1,2,3]")]);
    setup.tree(&format!(
        "handler:\n  kind: parallel\n  qos: exactly_once\n  retry: {{attempts: 3, backoff: 10ms}}\n  branches:\n    \
         sales: {{kind: exec, command: [\"{}\"]}}\n    stock: {{kind: exec, command: [\"{}\"]}}\n    \
         each: {{kind: fan_out, split: \"\", each: {{kind: exec, command: [\"{}\"]}}}}\n",
        sales.display(),
        stock.display(),
        each.display()
    ));
    setup.run_once();
    let row = setup.rows()["item"].clone();
    assert_eq!((row.status.as_str(), row.attempts), ("done", 2), "{row:?}");
    assert_eq!(
        json(row.output.as_deref().unwrap()),
        json(r#"{"sales":1,"stock":2,"each":[10,20,30]}"#)
    );
    let lines = |name: &str| fs::read_to_string(setup.path(name)).unwrap().lines().count();
    assert_eq!(
        lines("sales.log"),
        1,
        "sales answered the first time; the retry must not call it"
    );
    assert_eq!(lines("stock.log"), 2);
    assert_eq!(lines("each.log"), 4, "elements 1 and 3 once, element 2 twice");
    let progress = rusqlite::Connection::open(setup.path("state/progress.db")).unwrap();
    let left: i64 = progress
        .query_row("SELECT count(*) FROM progress", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "a finished item's answers are forgotten");
}

#[test]
fn under_exactly_once_the_run_after_a_crash_calls_only_the_branches_that_did_not_answer() {
    let setup = Setup::new();
    let sales = setup.logged("sales", "1");
    // The first call hangs (the daemon is killed during it); later ones answer.
    let stock = setup.script(
        "stock",
        &format!(
            "[ -e {mark} ] || {{ touch {mark}; sleep 60; }}; echo 2",
            mark = setup.path("stock.mark").display()
        ),
    );
    setup.spool(&[("item", "{}")]);
    setup.tree(&format!(
        "handler:\n  kind: parallel\n  qos: exactly_once\n  branches:\n    sales: {{kind: exec, command: [\"{}\"]}}\n    \
         stock: {{kind: exec, command: [\"{}\"]}}\n",
        sales.display(),
        stock.display()
    ));
    let mut child = setup
        .lote(&["run", "--once", "-c", "config.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = || {
        rusqlite::Connection::open(setup.path("state/progress.db"))
            .and_then(|c| c.query_row("SELECT count(*) FROM progress", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    while !(setup.path("stock.mark").exists() && recorded() == 1) {
        assert!(Instant::now() < deadline, "the first run never got half way");
        thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    assert!(setup.rows().is_empty(), "no outcome before the crash");
    setup.run_once();
    let row = setup.rows()["item"].clone();
    assert_eq!(row.status, "done", "{row:?}");
    assert_eq!(json(row.output.as_deref().unwrap()), json(r#"{"sales":1,"stock":2}"#));
    let calls = fs::read_to_string(setup.path("sales.log")).unwrap().lines().count();
    assert_eq!(
        calls, 1,
        "sales answered before the crash; the next run must not call it again"
    );
}

#[test]
fn the_seed_004_example_configs_are_accepted_and_print_their_tree() {
    let setup = Setup::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed-004");
    for (name, node) in [
        ("dashboard", "handler.branches.inventory (http; optional)"),
        ("order", "handler.steps.1.branches.shipping (http; fallback value)"),
        ("top-customers", "handler.steps.1.each (http; timeout 2s, bulkhead 4+8)"),
        (
            "cached",
            "handler (http; timeout 2s, 3 attempts, cache 1m, fallback value)",
        ),
    ] {
        let file = examples.join(format!("{name}.yaml"));
        let out = setup.run(&["check", "-c", file.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(node),
            "{name}: {}",
            text(&out)
        );
    }
}
