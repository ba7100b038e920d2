//! Scenario 4: a failure burst behind a breaker and a fallback.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lote::handler::{Fallback, FallbackTo};
use lote::policy::{Breaker, BreakerConfig, CallPolicy, Transition};
use lote::{CallContext, Failure, Item, Status};

use crate::paced::{run_session, Paced};
use crate::{ms, verdict};

pub fn run() {
    const RATE: usize = 200;
    const SECS: f64 = 6.0;
    let (down_from, down_to) = (Duration::from_millis(1500), Duration::from_millis(3500));
    println!(
        "== 4. failure burst: a downstream on 127.0.0.1 answers 503 from {:.1} s to {:.1} s; {RATE} items/s for {SECS} s; breaker (5 failures, open 500 ms, 1 probe) inside a Fallback ==",
        down_from.as_secs_f64(),
        down_to.as_secs_f64()
    );
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}/stock", server.server_addr().to_ip().unwrap());
    let down = Arc::new(AtomicBool::new(false));
    let (calls_up, calls_down) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let serving = {
        let (server, down) = (Arc::clone(&server), Arc::clone(&down));
        let (calls_up, calls_down) = (Arc::clone(&calls_up), Arc::clone(&calls_down));
        thread::spawn(move || {
            for request in server.incoming_requests() {
                let response = if down.load(Ordering::SeqCst) {
                    calls_down.fetch_add(1, Ordering::SeqCst);
                    tiny_http::Response::from_string("down").with_status_code(503)
                } else {
                    calls_up.fetch_add(1, Ordering::SeqCst);
                    tiny_http::Response::from_string("{\"stock\":7}")
                };
                let _ = request.respond(response);
            }
        })
    };

    let breaker = Arc::new(Breaker::new(BreakerConfig {
        failures: 5,
        open_for: Duration::from_millis(500),
        half_open_probes: 1,
    }));
    let started = Instant::now();
    let transitions = Arc::new(Mutex::new(Vec::<(Duration, Transition)>::new()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let guarded = {
        let (breaker, transitions) = (Arc::clone(&breaker), Arc::clone(&transitions));
        move |_: &CallContext<'_>, _: &Item| -> Result<String, Failure> {
            let permit = breaker.try_acquire().map_err(|rejected| {
                Failure::retryable(format!("breaker open, next probe in {:?}", rejected.retry_in))
            })?;
            let result = agent.get(&url).call();
            let (transition, answer) = match result {
                Ok(mut response) => (
                    permit.success(),
                    Ok(response.body_mut().read_to_string().unwrap_or_default()),
                ),
                Err(e) => (permit.failure(), Err(Failure::retryable(format!("downstream: {e}")))),
            };
            if let Some(t) = transition {
                transitions.lock().unwrap().push((started.elapsed(), t));
            }
            answer
        }
    };
    let fallback = Arc::new(Fallback::new(guarded, FallbackTo::Value("{\"stock\":null}".into())));
    let switch = {
        let down = Arc::clone(&down);
        thread::spawn(move || {
            thread::sleep(down_from.saturating_sub(started.elapsed()));
            down.store(true, Ordering::SeqCst);
            thread::sleep(down_to.saturating_sub(started.elapsed()));
            down.store(false, Ordering::SeqCst);
        })
    };
    let items = (RATE as f64 * SECS) as usize;
    let list = (0..items).map(|n| Item::new(format!("b{n}"), "x")).collect();
    let source = Paced::new(list, RATE);
    let outcomes = run_session(source, fallback.clone(), 4, CallPolicy::plain());
    switch.join().unwrap();
    server.unblock();
    serving.join().unwrap();

    let done = outcomes.iter().filter(|o| o.status == Status::Done).count();
    let from_fallback = outcomes
        .iter()
        .filter(|o| o.output.as_deref() == Some("{\"stock\":null}"))
        .count();
    println!(
        "{done} of {items} items done; {from_fallback} answered by the fallback (its count: {}); downstream calls: {} while up, {} while down",
        fallback.answered(),
        calls_up.load(Ordering::SeqCst),
        calls_down.load(Ordering::SeqCst)
    );
    let transitions = transitions.lock().unwrap();
    for (at, transition) in transitions.iter() {
        println!("  {:>7.3} s  breaker {transition:?}", at.as_secs_f64());
    }
    let opened = transitions
        .iter()
        .find(|(_, t)| *t == Transition::Opened)
        .map(|(at, _)| *at);
    let closed = transitions
        .iter()
        .rev()
        .find(|(_, t)| *t == Transition::Closed)
        .map(|(at, _)| *at);
    let recovered = opened.is_some_and(|at| at >= down_from)
        && closed.is_some_and(|at| at >= down_to)
        && from_fallback > 0
        && done == items;
    println!(
        "opened {} after the outage began; closed {} after it ended; now {}: {}",
        opened.map_or("never".into(), |at| ms(at.saturating_sub(down_from))),
        closed.map_or("never".into(), |at| ms(at.saturating_sub(down_to))),
        breaker.state().as_str(),
        verdict(recovered)
    );
    println!();
    assert!(
        recovered,
        "the breaker opened, the fallback answered, the breaker closed again"
    );
}
