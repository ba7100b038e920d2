//! The daemon's two reporting threads, started and stopped by
//! `daemon::run` (the `over` handle, stopped after the writer drained):
//!
//! - status (`lote-status`): writes `status.json` and the metrics textfile
//!   every `metrics.every`, logs the summary every `metrics.log_every`, and
//!   new warnings (queue ≥ 80 %, breaker open) when it looks. It also wakes
//!   when the [`Bell`](super::state::Bell) rings (a state change, a session's
//!   end, a reload, a stop), so the files say `stopping` at once.
//! - notify (`lote-notify`, only with `NOTIFY_SOCKET`): applies the watchdog
//!   rule and pings every `WATCHDOG_USEC / 2` (only when systemd asks for a
//!   watchdog); sends `STATUS=` lines at most once a second while something
//!   moves, backing off to `metrics.every` while nothing does; while the
//!   writer drains, its depth and a timeout extension each time the depth
//!   went down.
//!
//! Neither ticks faster than its own period when nothing changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::notify::{DrainWatch, Notifier, Progress, Watchdog, MAX_TICK};
use crate::session::StopHandle;
use crate::status::DaemonState;

use super::state::Shared;

/// The shortest pause between two looks of either thread, whatever the
/// config or the environment says: a nonsense value must not make a busy
/// loop.
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// The status thread. Ends when `over` stops (and the bell rings).
pub(super) fn status_thread(shared: &Shared, over: &StopHandle) {
    let mut next_log = Some(Instant::now());
    let mut warned: Vec<String> = Vec::new();
    let mut seen = shared.bell.rung();
    loop {
        if over.is_stopping() {
            return;
        }
        let every = shared.inputs.lock().every;
        let log_every = shared.inputs.lock().log_every;
        shared.write_files();
        let status = shared.capture();
        let warnings = status.warnings();
        // The queue's rise past 80 % is logged (once) by its event in the
        // producer (`Events::queue_nearly_full`); the others are logged here.
        let logged_here = |w: &&String| !w.starts_with("queue at ");
        for warning in warnings.iter().filter(logged_here).filter(|w| !warned.contains(w)) {
            log::warn!("{warning}");
        }
        warned = warnings;
        let now = Instant::now();
        if next_log.is_some_and(|at| now >= at) {
            log::info!("{}", status.summary_line());
            // None (never again) only past the clock's end; validation
            // bounds `log_every` far below it.
            next_log = now.checked_add(log_every);
        }
        let files = now.checked_add(every.max(MIN_PAUSE));
        let Some(deadline) = [files, next_log].into_iter().flatten().min() else {
            over.wait_for_stop();
            return;
        };
        seen = shared.bell.wait(seen, deadline.max(now + MIN_PAUSE));
    }
}

/// How long the notify thread waits, without a watchdog, before its next
/// `STATUS=` look: [`MAX_TICK`] after a look that saw something move, then
/// twice the last pause for each look that saw nothing, up to `cap` (the
/// `metrics.every` of the status file; never below `MAX_TICK`).
pub(super) fn status_pause(last: Duration, moved: bool, cap: Duration) -> Duration {
    if moved {
        MAX_TICK
    } else {
        last.saturating_mul(2).min(cap.max(MAX_TICK))
    }
}

/// The notify thread (only with `NOTIFY_SOCKET`). Ends when `over` stops
/// (and the bell rings).
pub(super) fn notify_thread(shared: &Shared, over: &StopHandle, notifier: &Notifier) {
    let period = notifier.watchdog_period();
    // Not below 10 ms: a nonsense WATCHDOG_USEC must not make a busy loop.
    let watchdog_tick = period.map(|p| (p / 2).clamp(Duration::from_millis(10), MAX_TICK));
    let look = || {
        let inputs = shared.inputs.lock();
        let writer = inputs.writer.as_ref().map(|w| Arc::clone(w.metrics()));
        let breaker = inputs.breaker.as_ref().map(|b| b.state().as_str());
        (
            shared.state(&inputs),
            inputs.bounds,
            inputs.threads,
            breaker,
            writer,
            inputs.every,
        )
    };
    let (_, bounds, ..) = look();
    let mut watchdog = Watchdog::new(bounds, Progress::default(), Instant::now());
    let mut wedged = false;
    let mut drain = DrainWatch::default();
    // (when, outcomes) at the last running STATUS line, for the throughput.
    let mut last_status: Option<(Instant, u64)> = None;
    let mut last_drain_depth = None;
    // What the last look saw, and the pause after it.
    let mut last_look: Option<(DaemonState, Progress)> = None;
    let mut pause = MAX_TICK;
    let mut seen = shared.bell.rung();
    loop {
        let (state, bounds, threads, breaker, writer, every) = look();
        let progress = Progress::read(&shared.metrics, writer.as_deref());
        let now = Instant::now();
        if period.is_some() {
            watchdog.set_bounds(bounds);
            match watchdog.check(progress, now) {
                Ok(()) => {
                    if std::mem::take(&mut wedged) {
                        log::warn!("watchdog: progress again; pinging systemd again");
                    }
                    notifier.watchdog();
                }
                Err(why) if !wedged => {
                    wedged = true;
                    log::error!("watchdog: {why}; withholding WATCHDOG=1 so that systemd restarts lote");
                    notifier.status(&format!("wedged: {why}"));
                }
                Err(_) => {}
            }
        }
        if state == DaemonState::Draining {
            if let Some(by) = drain.look(progress.writer_depth) {
                notifier.extend(by);
            }
            if last_drain_depth != Some(progress.writer_depth) && !wedged {
                notifier.status(&format!("draining: writer depth {}", progress.writer_depth));
                last_drain_depth = Some(progress.writer_depth);
            }
        } else if !wedged && last_status.is_none_or(|(at, _)| now.duration_since(at) >= MAX_TICK) {
            let m = &shared.metrics;
            let outcomes = m.done.get() + m.failed.get() + m.skipped.get();
            let rate = last_status.map_or(0.0, |(at, before)| {
                outcomes.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
            });
            let queue = m
                .queue
                .stats()
                .map_or_else(|| "-".into(), |q| format!("{}/{}", q.stats.len, q.stats.capacity));
            let mut line = format!(
                "{state} | queue {queue} | busy {}/{threads} | {rate:.1} items/s | done {} failed {}",
                progress.busy_workers,
                m.done.get(),
                m.failed.get()
            );
            if let Some(breaker) = breaker {
                line.push_str(&format!(" | breaker {breaker}"));
            }
            line.push_str(&format!(" | writer depth {}", progress.writer_depth));
            notifier.status(&line);
            last_status = Some((now, outcomes));
        }
        let moved = last_look != Some((state, progress)) || progress.busy_workers > 0;
        last_look = Some((state, progress));
        // A drain is looked at every second: the stop timeout extensions
        // (`DRAIN_EXTENSION`) are sized on it.
        pause = if state == DaemonState::Draining {
            MAX_TICK
        } else {
            status_pause(pause, moved, every)
        };
        // With a watchdog, its period; the STATUS line comes along.
        let tick = watchdog_tick.map_or(pause, |tick| tick.min(pause));
        seen = shared.bell.wait(seen, now + tick);
        if over.is_stopping() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_backs_off_while_nothing_moves_and_comes_back_at_once() {
        let cap = Duration::from_secs(15);
        let mut pause = MAX_TICK;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            pause = status_pause(pause, false, cap);
            pauses.push(pause.as_secs());
        }
        assert_eq!(pauses, [2, 4, 8, 15, 15, 15]);
        assert_eq!(status_pause(pause, true, cap), MAX_TICK);
        // Never below a second, whatever metrics.every says.
        assert_eq!(status_pause(MAX_TICK, false, Duration::from_millis(10)), MAX_TICK);
    }
}
