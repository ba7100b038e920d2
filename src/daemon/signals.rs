//! The signal thread (`lote-signals`): started by `daemon::run`, stopped by
//! `run` closing the signal iterator on the way out; blocked on the signals
//! otherwise (it never ticks). It owns nothing: it turns SIGTERM/SIGINT
//! into `StopHandle::trigger`, SIGHUP into [`SignalFlags::reload`] (and ends
//! a continuous session, which has no boundary of its own), SIGUSR1 into
//! [`SignalFlags::status_wanted`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::{Handle, Signals};

use crate::notify::Notifier;
use crate::session::{StopHandle, StopLevel, StopReason};
use crate::sync::Mutex;

use super::DaemonError;

/// What the signal thread tells the session loop.
#[derive(Default)]
pub(super) struct SignalFlags {
    /// SIGHUP: read the config again at the next session boundary.
    pub(super) reload: AtomicBool,
    /// SIGUSR1: log a status summary after the session.
    pub(super) status_wanted: AtomicBool,
    /// The running continuous session's own stop handle (a child of the
    /// daemon's), `None` between sessions and for a session that ends on
    /// its own schedule (`--once`, `session.every`). Protects which session
    /// is current: set and cleared by the session loop from the config
    /// running then (a reload may change it), read by the signal thread
    /// (SIGHUP ends a continuous session); held only to set, clear or clone
    /// it.
    pub(super) current: Mutex<Option<StopHandle>>,
}

/// The running signal thread: [`SignalThread::close`] ends it.
pub(super) struct SignalThread {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl SignalThread {
    /// Installs the handlers and starts the thread.
    pub(super) fn start(
        stop: StopHandle,
        flags: Arc<SignalFlags>,
        notifier: Notifier,
    ) -> Result<SignalThread, DaemonError> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(|e| DaemonError::Build(format!("installing signal handlers: {e}")))?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("lote-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    on_signal(signal, &stop, &flags, &notifier);
                }
            })
            .map_err(|e| DaemonError::Build(format!("starting the signal thread: {e}")))?;
        Ok(SignalThread { handle, thread })
    }

    /// Closes the signal iterator and joins the thread.
    pub(super) fn close(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

fn on_signal(signal: i32, stop: &StopHandle, flags: &SignalFlags, notifier: &Notifier) {
    match signal {
        SIGTERM | SIGINT => {
            let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
            match stop.trigger(StopReason::Signal(name.into())) {
                StopLevel::Hurry => log::warn!("{name} again: cutting in-flight work short"),
                _ => {
                    log::info!("{name}: stopping after the items in hand");
                    notifier.stopping();
                }
            }
        }
        SIGHUP => {
            log::info!("SIGHUP: the config is read again at the next session boundary");
            // Set before the lock is taken: the session loop relies on it
            // (see `Daemon::start_session`).
            flags.reload.store(true, Ordering::Relaxed);
            // A continuous session has no boundary of its own: end it
            // (gracefully) so one comes.
            if let Some(session) = flags.current.lock().as_ref() {
                session.stop(StopReason::Requested);
            }
        }
        SIGUSR1 => flags.status_wanted.store(true, Ordering::Relaxed),
        _ => {}
    }
}
