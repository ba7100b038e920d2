use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::stop::StopHandle;

fn call(handler: &dyn Handler, item: &Item) -> Result<String, Failure> {
    let stop = StopHandle::new();
    let ctx = CallContext::new(item, 1, None, &stop);
    handler.handle(&ctx, item)
}

fn after(ms: u64, output: &'static str) -> Arc<dyn Handler> {
    Arc::new(move |_: &CallContext<'_>, _: &Item| {
        thread::sleep(Duration::from_millis(ms));
        Ok(output.to_string())
    })
}

fn failing(failure: Failure) -> Arc<dyn Handler> {
    Arc::new(move |_: &CallContext<'_>, _: &Item| Err(failure.clone()))
}

#[test]
fn parallel_branches_run_at_once_and_merge_in_order_with_json_embedded() {
    let dashboard = Parallel::new(vec![
        Branch::new("sales", after(200, r#"{"total": 12}"#)),
        Branch::new("stock", after(200, "low")),
        Branch::new("alerts", after(200, "[1, 2]")),
    ])
    .unwrap();
    let started = Instant::now();
    let output = call(&dashboard, &Item::new("d", "")).unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "latency is the slowest branch, not the sum: {took:?}"
    );
    assert_eq!(output, r#"{"sales":{"total": 12},"stock":"low","alerts":[1, 2]}"#);
    let parsed: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(parsed["sales"]["total"], 12);
}

#[test]
fn a_failed_optional_branch_is_null_and_a_required_one_fails_the_item() {
    let degraded = Parallel::new(vec![
        Branch::new("sales", after(0, "1")),
        Branch::new("stock", failing(Failure::retryable("down"))).optional(),
    ])
    .unwrap();
    assert_eq!(
        call(&degraded, &Item::new("d", "")).unwrap(),
        r#"{"sales":1,"stock":null}"#
    );

    let broken = Parallel::new(vec![
        Branch::new(
            "sales",
            failing(Failure::retryable("busy").with_retry_after(Duration::from_secs(3))),
        ),
        Branch::new("stock", after(0, "ok")),
    ])
    .unwrap();
    let failure = call(&broken, &Item::new("d", "")).unwrap_err();
    assert!(failure.is_retryable());
    assert_eq!(failure.message, "branch sales: busy");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));

    let bad = Parallel::new(vec![
        Branch::new("a", failing(Failure::retryable("busy"))),
        Branch::new("b", failing(Failure::fatal("bad id"))),
    ])
    .unwrap();
    let failure = call(&bad, &Item::new("d", "")).unwrap_err();
    assert!(
        !failure.is_retryable(),
        "a fatal branch makes the item fatal: {failure:?}"
    );
    assert_eq!(failure.message, "branch a: busy; branch b: bad id");
}

#[test]
fn a_panicking_branch_fails_only_its_item() {
    let panics: Arc<dyn Handler> =
        Arc::new(|_: &CallContext<'_>, _: &Item| -> Result<String, Failure> { panic!("boom") });
    let parallel = Parallel::new(vec![Branch::new("p", panics), Branch::new("ok", after(0, "1"))]).unwrap();
    let failure = call(&parallel, &Item::new("d", "")).unwrap_err();
    assert_eq!(
        (failure.kind, failure.message.as_str()),
        (FailureKind::Fatal, "branch p: it panicked")
    );
}

#[test]
fn a_sequence_feeds_each_output_to_the_next_step() {
    let order_lookup = Sequence::new(vec![
        Arc::new(|_: &CallContext<'_>, item: &Item| {
            Ok(format!("customer-of-{}", String::from_utf8_lossy(&item.payload)))
        }),
        Arc::new(|_: &CallContext<'_>, item: &Item| {
            Ok(format!("orders-of-{}", String::from_utf8_lossy(&item.payload)))
        }),
    ])
    .unwrap();
    assert_eq!(
        call(&order_lookup, &Item::new("o", "42")).unwrap(),
        "orders-of-customer-of-42"
    );

    let stopped = Sequence::new(vec![
        after(0, "x"),
        failing(Failure::fatal("no such customer")),
        after(0, "never"),
    ])
    .unwrap();
    let failure = call(&stopped, &Item::new("o", "42")).unwrap_err();
    assert_eq!(
        (failure.kind, failure.message.as_str()),
        (FailureKind::Fatal, "step 2: no such customer")
    );
}

#[test]
fn a_fan_out_keeps_input_order_never_exceeds_max_parallel_and_keys_each_element() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let each: Arc<dyn Handler> = {
        let (running, most, keys) = (Arc::clone(&running), Arc::clone(&most), Arc::clone(&keys));
        Arc::new(move |ctx: &CallContext<'_>, item: &Item| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            keys.lock().unwrap().push(ctx.idempotency_key().to_string());
            let n: u64 = String::from_utf8_lossy(&item.payload).parse().unwrap();
            // Later elements finish first.
            thread::sleep(Duration::from_millis(60 - n * 5));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("{{\"customer\":{n}}}"))
        })
    };
    let top = FanOut::new("/customers", each, 3, OnElementFailure::Fail, 100).unwrap();
    let item = Item::new("top", r#"{"customers": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}"#);
    let output = call(&top, &item).unwrap();
    let expected: Vec<String> = (1..=10).map(|n| format!("{{\"customer\":{n}}}")).collect();
    assert_eq!(output, format!("[{}]", expected.join(",")));
    assert!(most.load(Ordering::SeqCst) <= 3, "max_parallel held");
    assert_eq!(most.load(Ordering::SeqCst), 3, "and used");
    let mut keys = keys.lock().unwrap().clone();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10, "one key per element: {keys:?}");
    assert!(keys.contains(&"top/0".to_string()));
}

#[test]
fn a_fan_out_element_failure_fails_nulls_or_drops_and_too_many_elements_is_fatal() {
    let each: Arc<dyn Handler> = Arc::new(|_: &CallContext<'_>, item: &Item| {
        if item.payload == b"2" {
            Err(Failure::retryable("element busy"))
        } else {
            Ok(String::from_utf8_lossy(&item.payload).into_owned())
        }
    });
    let item = Item::new("x", "[1, 2, 3]");
    let fan = |on| FanOut::new("", Arc::clone(&each), 2, on, 3).unwrap();
    let failure = call(&fan(OnElementFailure::Fail), &item).unwrap_err();
    assert!(
        failure.is_retryable() && failure.message == "element 1: element busy",
        "{failure:?}"
    );
    assert_eq!(call(&fan(OnElementFailure::Null), &item).unwrap(), "[1,null,3]");
    assert_eq!(call(&fan(OnElementFailure::Drop), &item).unwrap(), "[1,3]");
    let too_many = call(&fan(OnElementFailure::Fail), &Item::new("x", "[1, 2, 3, 4]")).unwrap_err();
    assert!(!too_many.is_retryable() && too_many.message.contains("more than max_elements (3)"));
    let not_array = call(&fan(OnElementFailure::Fail), &Item::new("x", r#"{"a": 1}"#)).unwrap_err();
    assert!(!not_array.is_retryable() && not_array.message.contains("not an array"));
}

#[test]
fn a_stop_reaches_every_branch() {
    let waits: Arc<dyn Handler> = Arc::new(|ctx: &CallContext<'_>, _: &Item| {
        ctx.stop_handle().sleep(Duration::from_secs(30));
        Err(Failure::retryable("cut short"))
    });
    let parallel = Parallel::new(vec![Branch::new("a", Arc::clone(&waits)), Branch::new("b", waits)]).unwrap();
    let stop = StopHandle::new();
    let item = Item::new("s", "");
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            stop.stop(crate::stop::StopReason::Requested);
        })
    };
    let started = Instant::now();
    let ctx = CallContext::new(&item, 1, None, &stop);
    assert!(parallel.handle(&ctx, &item).is_err());
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn composites_refuse_what_cannot_run() {
    assert!(Parallel::new(Vec::new()).is_err());
    assert!(
        Parallel::new(vec![Branch::new("a", after(0, "")), Branch::new("a", after(0, ""))])
            .err()
            .unwrap()
            .contains("twice")
    );
    assert!(Sequence::new(Vec::new()).is_err());
    assert!(FanOut::new("items", after(0, ""), 1, OnElementFailure::Fail, 1).is_err());
    assert!(FanOut::new("/items", after(0, ""), 0, OnElementFailure::Fail, 1).is_err());
}
