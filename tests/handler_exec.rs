//! The exec handler against real child processes (SPEC §3.5 timeout, §3.6,
//! §3.10): what the child gets, how its exit maps to an outcome, and that no
//! process of a call outlives it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lote::handler::exec::{ExecConfig, ExecHandler, PIPE_DRAIN};
use lote::{CallContext, Failure, FailureKind, Handler, Item, StopHandle, StopReason};

fn handler(config: ExecConfig) -> ExecHandler {
    ExecHandler::new(config).expect("valid exec config")
}

fn argv(args: &[&str]) -> ExecConfig {
    ExecConfig::new(args.iter().copied())
}

/// Runs one call (attempt 1) with an optional deadline; returns the result
/// and how long the call took.
fn call(handler: &ExecHandler, item: &Item, deadline: Option<Duration>) -> (Result<String, Failure>, Duration) {
    let stop = StopHandle::new();
    call_with(handler, item, 1, deadline, &stop)
}

fn call_with(
    handler: &ExecHandler,
    item: &Item,
    attempt: u32,
    deadline: Option<Duration>,
    stop: &StopHandle,
) -> (Result<String, Failure>, Duration) {
    let started = Instant::now();
    let ctx = CallContext::new(item, attempt, deadline.map(|d| started + d), stop);
    let result = handler.handle(&ctx, item);
    (result, started.elapsed())
}

/// True once `pid` is gone or a zombie (killed; only its parent's reaping is
/// left, which for an orphan is the container's init).
fn is_dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn assert_dies_soon(pid: u32) {
    let until = Instant::now() + Duration::from_secs(2);
    while !is_dead(pid) {
        assert!(Instant::now() < until, "process {pid} is still alive");
        thread::sleep(Duration::from_millis(10));
    }
}

fn read_pids(path: &std::path::Path) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let pids: Vec<u32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        if !pids.is_empty() || Instant::now() > until {
            return pids;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn payload_reaches_stdin_and_stdout_comes_back() {
    let cat = handler(argv(&["cat"]));
    let (result, took) = call(&cat, &Item::new("a", "hello\nworld"), None);
    assert_eq!(result.unwrap(), "hello\nworld");
    eprintln!("cat round trip: {took:?}");
    // An empty payload is /dev/null: EOF at once.
    assert_eq!(call(&cat, &Item::new("b", ""), None).0.unwrap(), "");
}

#[test]
fn the_child_sees_its_item_in_the_environment() {
    let mut config = argv(&[
        "sh",
        "-c",
        "printf %s \"$LOTE_ITEM_ID:$LOTE_ATTEMPT:$LOTE_PRIORITY:$EXTRA\"",
    ]);
    config.env = vec![
        ("EXTRA".into(), "x".into()),
        // lote's own variables win over the config's.
        ("LOTE_ITEM_ID".into(), "spoofed".into()),
    ];
    let sh = handler(config);
    let item = Item::new("item-7", "").with_priority(5);
    let (result, _) = call_with(&sh, &item, 3, None, &StopHandle::new());
    assert_eq!(result.unwrap(), "item-7:3:5:x");
}

#[test]
fn workdir_is_the_childs_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = argv(&["pwd"]);
    config.workdir = Some(dir.path().to_path_buf());
    let pwd = handler(config);
    let out = call(&pwd, &Item::new("a", ""), None).0.unwrap();
    assert_eq!(
        fs::canonicalize(out.trim()).unwrap(),
        fs::canonicalize(dir.path()).unwrap()
    );
}

/// A payload far bigger than a pipe buffer, through a child that writes as
/// it reads: lote must feed stdin and drain stdout at the same time.
#[test]
fn a_1_mib_payload_does_not_deadlock_and_output_is_cut_at_the_limit() {
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut config = argv(&["cat"]);
    config.output_limit = 1000;
    let cat = handler(config);
    let (result, took) = call(&cat, &Item::new("big", payload.clone()), Some(Duration::from_secs(10)));
    let out = result.unwrap();
    assert_eq!(out.as_bytes(), &payload[..1000]);
    eprintln!("1 MiB through cat, 1000 bytes kept: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_non_zero_exit_is_retryable_with_the_stderr_tail() {
    let sh = handler(argv(&[
        "sh",
        "-c",
        "echo 'first line' >&2; echo 'disk full' >&2; exit 3",
    ]));
    let failure = call(&sh, &Item::new("a", ""), None).0.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert_eq!(failure.message, "exit code 3: first line\ndisk full");
}

#[test]
fn stderr_keeps_only_its_tail() {
    // 10 000 x's, then the line that explains the failure.
    let sh = handler(argv(&[
        "sh",
        "-c",
        "head -c 10000 /dev/zero | tr '\\0' x >&2; echo >&2; echo why >&2; exit 1",
    ]));
    let failure = call(&sh, &Item::new("a", ""), None).0.unwrap_err();
    assert!(failure.message.ends_with("\nwhy"), "{}", failure.message);
    assert!(failure.message.len() <= "exit code 1: ".len() + lote::handler::exec::STDERR_KEEP);
}

#[test]
fn a_listed_exit_code_is_fatal() {
    let mut config = argv(&["sh", "-c", "echo 'bad input' >&2; exit 65"]);
    config.fatal_exit_codes = vec![65];
    let sh = handler(config);
    let failure = call(&sh, &Item::new("a", ""), None).0.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Fatal);
    assert_eq!(failure.message, "exit code 65: bad input");
    assert_eq!(failure.retry_after, None);
}

#[test]
fn killed_by_a_signal_is_retryable() {
    let sh = handler(argv(&["sh", "-c", "kill -SEGV $$"]));
    let failure = call(&sh, &Item::new("a", ""), None).0.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert_eq!(failure.message, "killed by signal SIGSEGV");
}

/// SPEC §3.5: on timeout the child's process GROUP gets SIGTERM; here
/// SIGTERM is enough, so the call ends right after the deadline, and the
/// shell and both its background sleeps are dead when it returns.
#[test]
fn the_deadline_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut config = argv(&[
        "sh",
        "-c",
        "echo $$ >> \"$1\"; sleep 30 & echo $! >> \"$1\"; sleep 30 & echo $! >> \"$1\"; wait",
        "sh",
        pids.to_str().unwrap(),
    ]);
    config.kill_grace = Duration::from_millis(500);
    let sh = handler(config);
    let (result, took) = call(&sh, &Item::new("slow", ""), Some(Duration::from_millis(200)));
    let failure = result.unwrap_err();
    eprintln!("deadline 200ms, SIGTERM obeyed: returned after {took:?}");
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert!(failure.message.starts_with("timed out after "), "{}", failure.message);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(200 + 500),
        "SIGTERM should end it before the grace: {took:?}"
    );
    let pids = read_pids(&pids);
    assert_eq!(pids.len(), 3, "{pids:?}");
    for pid in pids {
        assert_dies_soon(pid);
    }
}

/// A child (and its child) that ignore SIGTERM are SIGKILLed once the grace
/// has passed.
#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut config = argv(&[
        "sh",
        "-c",
        "trap '' TERM; sleep 30 & echo $! >> \"$1\"; wait",
        "sh",
        pids.to_str().unwrap(),
    ]);
    config.kill_grace = Duration::from_millis(500);
    let sh = handler(config);
    let (result, took) = call(&sh, &Item::new("stubborn", ""), Some(Duration::from_millis(200)));
    eprintln!("deadline 200ms + grace 500ms, SIGTERM ignored: returned after {took:?}");
    let failure = result.unwrap_err();
    assert!(failure.message.starts_with("timed out after "), "{}", failure.message);
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    for pid in read_pids(&pids) {
        assert_dies_soon(pid);
    }
}

/// A second stop signal (hurry) cuts the child short at once, whatever the
/// deadline; the default 5 s grace is not waited out because SIGTERM works.
#[test]
fn hurry_cuts_the_child_short() {
    let sleep = handler(argv(&["sleep", "30"]));
    let stop = StopHandle::new();
    let signaller = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            stop.trigger(StopReason::Signal("SIGTERM".into()));
            thread::sleep(Duration::from_millis(100));
            stop.trigger(StopReason::Signal("SIGTERM".into()));
        })
    };
    let (result, took) = call_with(&sleep, &Item::new("a", ""), 1, None, &stop);
    signaller.join().unwrap();
    eprintln!("hurry at 200ms: returned after {took:?}");
    let failure = result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert_eq!(failure.message, "cut short: lote is stopping");
    // The first signal alone (stopping) lets the item finish; only the hurry cuts.
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Already hurrying: nothing starts.
    let (result, took) = call_with(&sleep, &Item::new("b", ""), 1, None, &stop);
    assert_eq!(result.unwrap_err().message, "cut short: lote is stopping");
    assert!(took < Duration::from_millis(50), "{took:?}");
}

#[test]
fn kill_all_running_kills_a_running_child_and_closes_the_handler() {
    let sleep = Arc::new(handler(argv(&["sleep", "30"])));
    let worker = {
        let sleep = Arc::clone(&sleep);
        thread::spawn(move || call(&sleep, &Item::new("a", ""), None))
    };
    thread::sleep(Duration::from_millis(200));
    assert_eq!(sleep.kill_all_running(), 1);
    let (result, took) = worker.join().unwrap();
    eprintln!("kill_all_running at 200ms: call returned after {took:?}");
    assert_eq!(result.unwrap_err().message, "cut short: lote is stopping");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(sleep.kill_all_running(), 0);
    // Closed: no new child.
    let (result, took) = call(&sleep, &Item::new("b", ""), None);
    assert_eq!(result.unwrap_err().message, "cut short: lote is stopping");
    assert!(took < Duration::from_millis(50), "{took:?}");
}

/// A command that exits leaving a background process in its group: the
/// leftover is killed with the call, and the call does not wait for it.
#[test]
fn what_a_child_leaves_behind_dies_with_the_call() {
    let sh = handler(argv(&["sh", "-c", "sleep 30 & echo $!"]));
    let (result, took) = call(&sh, &Item::new("a", ""), None);
    let leftover: u32 = result.unwrap().trim().parse().unwrap();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_dies_soon(leftover);
}

/// A descendant that escaped the group (setsid) and holds stdout open cannot
/// be killed by lote, but cannot hang the call either.
#[test]
fn an_escaped_descendant_holding_stdout_does_not_hang_the_call() {
    // The final sleep gives the escapee time to leave the group before the
    // shell exits (and lote kills what is left in it).
    let sh = handler(argv(&["sh", "-c", "echo hi; setsid sleep 3 & echo $!; sleep 0.2"]));
    let (result, took) = call(&sh, &Item::new("a", ""), None);
    eprintln!("escaped descendant holding stdout: returned after {took:?}");
    let out = result.unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hi"));
    assert!(took >= PIPE_DRAIN, "the escapee holds stdout: {took:?}");
    assert!(
        took < Duration::from_millis(200) + PIPE_DRAIN + Duration::from_millis(500),
        "{took:?}"
    );
    // Tidy up the escapee this test made.
    if let Some(pid) = lines.next().and_then(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn concurrent_calls_keep_their_own_output() {
    let sh = Arc::new(handler(argv(&["sh", "-c", "printf %s \"$LOTE_ITEM_ID\"; cat"])));
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let sh = Arc::clone(&sh);
            thread::spawn(move || {
                for i in 0..25 {
                    let id = format!("w{w}-{i}");
                    let (result, _) = call(&sh, &Item::new(id.clone(), format!("/{id}")), None);
                    assert_eq!(result.unwrap(), format!("{id}/{id}"));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    eprintln!("100 calls of sh on 4 threads: {:?}", started.elapsed());
}

#[test]
fn new_rejects_what_cannot_run_with_a_clear_error() {
    let err = ExecHandler::new(argv(&["lote-no-such-program-xyz"])).unwrap_err();
    assert!(
        err.contains("lote-no-such-program-xyz") && err.contains("not in PATH"),
        "{err}"
    );
    assert!(err.contains("install it or give its full path"), "{err}");

    let err = ExecHandler::new(argv(&["/nonexistent/bin/tool"])).unwrap_err();
    assert!(err.contains("/nonexistent/bin/tool does not exist"), "{err}");

    let err = ExecHandler::new(ExecConfig::default()).unwrap_err();
    assert!(err.contains("`command` is empty"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let err = ExecHandler::new(argv(&[script.to_str().unwrap()])).unwrap_err();
    assert!(err.contains("is not executable"), "{err}");

    let mut config = argv(&["cat"]);
    config.workdir = Some(dir.path().join("missing"));
    let err = ExecHandler::new(config).unwrap_err();
    assert!(err.contains("workdir") && err.contains("missing"), "{err}");

    // The program is resolved once, to an absolute path.
    let cat = ExecHandler::new(argv(&["cat"])).unwrap();
    assert!(cat.program().is_absolute());
}
