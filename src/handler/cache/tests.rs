use std::sync::atomic::AtomicUsize;
use std::thread;

use super::*;

/// A downstream that counts its calls and answers `v<n>` after `delay`.
fn counting(delay: Duration) -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn Handler> = {
        let calls = Arc::clone(&calls);
        Arc::new(move |_: &CallContext<'_>, _: &Item| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            thread::sleep(delay);
            Ok(format!("v{n}"))
        })
    };
    (calls, handler)
}

fn call(cache: &Cache, item: &Item) -> Result<String, Failure> {
    let stop = StopHandle::new();
    cache.handle(&CallContext::new(item, 1, None, &stop), item)
}

#[test]
fn a_hundred_concurrent_misses_of_one_key_make_one_call() {
    let (calls, downstream) = counting(Duration::from_millis(200));
    let cache = Arc::new(Cache::new(downstream, CacheConfig::new(Duration::from_secs(60))).unwrap());
    let callers: Vec<_> = (0..100)
        .map(|i| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || call(&cache, &Item::new(format!("i{i}"), "same payload")))
        })
        .collect();
    let outputs: Vec<_> = callers.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(outputs.iter().all(|o| o == "v1"), "{outputs:?}");
    let stats = cache.stats();
    assert_eq!(stats.misses.load(Ordering::SeqCst), 1);
    assert_eq!(
        stats.hits.load(Ordering::SeqCst) + stats.shared.load(Ordering::SeqCst),
        99
    );
}

#[test]
fn an_entry_expires_after_its_ttl_and_failures_are_not_cached() {
    let (calls, downstream) = counting(Duration::ZERO);
    let cache = Cache::new(downstream, CacheConfig::new(Duration::from_millis(150))).unwrap();
    let item = Item::new("a", "p");
    assert_eq!(call(&cache, &item).unwrap(), "v1");
    assert_eq!(call(&cache, &item).unwrap(), "v1");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(call(&cache, &item).unwrap(), "v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let failures = Arc::new(AtomicUsize::new(0));
    let flaky: Arc<dyn Handler> = {
        let failures = Arc::clone(&failures);
        Arc::new(move |_: &CallContext<'_>, _: &Item| {
            if failures.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Failure::retryable("down"))
            } else {
                Ok("up".to_string())
            }
        })
    };
    let cache = Cache::new(flaky, CacheConfig::new(Duration::from_secs(60))).unwrap();
    assert!(call(&cache, &item).is_err());
    assert_eq!(call(&cache, &item).unwrap(), "up");
}

#[test]
fn refresh_ahead_refreshes_before_expiry_in_the_background() {
    let (calls, downstream) = counting(Duration::from_millis(300));
    let config = CacheConfig {
        refresh_ahead: Some(0.5),
        ..CacheConfig::new(Duration::from_millis(1200))
    };
    let cache = Cache::new(downstream, config).unwrap();
    let item = Item::new("a", "p");
    assert_eq!(call(&cache, &item).unwrap(), "v1");
    thread::sleep(Duration::from_millis(700));
    // Past half its TTL: answered from the cache at once (not after the
    // 300 ms call), refreshed behind.
    let started = Instant::now();
    assert_eq!(call(&cache, &item).unwrap(), "v1");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "a hit does not wait for the refresh"
    );
    thread::sleep(Duration::from_millis(700));
    // Past the first entry's TTL: the refreshed one answers.
    assert_eq!(call(&cache, &item).unwrap(), "v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().refreshes.load(Ordering::SeqCst), 1);
}

#[test]
fn the_least_recently_used_entry_goes_first() {
    let (calls, downstream) = counting(Duration::ZERO);
    let config = CacheConfig {
        max_entries: 2,
        ..CacheConfig::new(Duration::from_secs(60))
    };
    let cache = Cache::new(downstream, config).unwrap();
    let (a, b, c) = (Item::new("1", "a"), Item::new("2", "b"), Item::new("3", "c"));
    call(&cache, &a).unwrap();
    call(&cache, &b).unwrap();
    call(&cache, &a).unwrap(); // a is now more recent than b
    call(&cache, &c).unwrap(); // b goes
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    call(&cache, &a).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a stayed");
    call(&cache, &b).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "b was evicted");
    assert_eq!(cache.stats().evictions.load(Ordering::SeqCst), 2);
}

#[test]
fn keys_come_from_templates_and_json_pointers() {
    let by_customer = CacheKey::template("customer-{/customer/id}");
    let item = |id: &str, payload: &str| Item::new(id, payload);
    assert_eq!(
        by_customer
            .of(&item("1", r#"{"customer": {"id": 7}, "at": 1}"#))
            .as_deref(),
        Some("customer-7")
    );
    assert_eq!(by_customer.of(&item("1", "not json")), None);
    assert_eq!(
        CacheKey::template("{id}:{payload}").of(&item("x", "p")).as_deref(),
        Some("x:p")
    );
    assert_eq!(CacheKey::template("{nope}").of(&item("x", "p")), None);
    let hash = CacheKey::PayloadHash;
    assert_eq!(hash.of(&item("1", "p")), hash.of(&item("2", "p")));
    assert_ne!(hash.of(&item("1", "p")), hash.of(&item("1", "q")));

    let (calls, downstream) = counting(Duration::ZERO);
    let config = CacheConfig {
        key: by_customer,
        ..CacheConfig::new(Duration::from_secs(60))
    };
    let cache = Cache::new(downstream, config).unwrap();
    call(&cache, &item("1", r#"{"customer": {"id": 7}, "at": 1}"#)).unwrap();
    call(&cache, &item("2", r#"{"customer": {"id": 7}, "at": 2}"#)).unwrap();
    // No key (not JSON): called uncached.
    call(&cache, &item("3", "not json")).unwrap();
    call(&cache, &item("4", "not json")).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
