//! [`Listener`]: the bound socket, the accept thread that admits or refuses
//! each connection, one thread per admitted connection, drain and stop.
//!
//! # Threads
//!
//! - `lote-http-accept`, started by [`Listener::start`], stopped by
//!   [`Listener::stop`] (or drop), which drops the write end of a pipe the
//!   thread polls beside the listening socket. It owns the listening socket
//!   (closed when it returns) and the connection threads' join handles,
//!   which it reaps as they finish and hands back to `stop` to join.
//! - `lote-http-conn`, one per admitted connection, started by the accept
//!   thread; it ends when its client closes, times out or is answered with
//!   `Connection: close`, or when `stop` shuts the socket's read side (an
//!   answer in flight is still written). It owns its socket; a clone sits in
//!   `serve::Open` for `stop` to shut.

use std::io::{self, PipeReader, PipeWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::http::{Conn, Stream};
use super::serve::{self, Counts, Shared};
use super::{Backend, HttpConfig, Listen};

/// A connection thread's stack: it parses JSON and calls the backend (which
/// may run SQLite). Only the pages touched count against RSS.
const CONNECTION_STACK: usize = 512 * 1024;
/// How long the accept thread waits to send a refusal (it fits in any
/// fresh socket's buffer; this only bounds a broken one).
const REFUSAL_WRITE: Duration = Duration::from_millis(100);
/// After an accept error (EMFILE: out of descriptors), the pause before
/// the next try, so a full descriptor table is not a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The running listener. Dropping it stops it.
pub struct Listener {
    shared: Arc<Shared>,
    /// Dropped by `stop`: the accept thread sees its pipe hang up. Its only use.
    wake: Option<PipeWriter>,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
    local_addr: Option<SocketAddr>,
    /// The Unix socket file and its (device, inode), removed at stop if it
    /// is still the one bound.
    socket: Option<(PathBuf, (u64, u64))>,
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Bound {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Bound::Tcp(l) => l.as_fd(),
            Bound::Unix(l) => l.as_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        let stream = match self {
            Bound::Tcp(l) => {
                let (s, _) = l.accept()?;
                // Answers go out in one write each; none should wait for an ACK.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Bound::Unix(l) => Stream::Unix(l.accept()?.0),
        };
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl Listener {
    /// Binds `config.listen` and starts the accept thread. A stale Unix
    /// socket file (no process listening on it) is replaced; a live one,
    /// or a file that is not a socket, is an error.
    pub fn start(config: &HttpConfig, token: Option<String>, backend: Arc<dyn Backend>) -> io::Result<Listener> {
        let (bound, local_addr, socket) = match &config.listen {
            Listen::Tcp(address) => {
                let listener = TcpListener::bind(address.as_str())
                    .map_err(|e| io::Error::new(e.kind(), format!("binding http.listen {address}: {e}")))?;
                let local = listener.local_addr()?;
                (Bound::Tcp(listener), Some(local), None)
            }
            Listen::Unix(path) => {
                let listener = bind_unix(path, config.socket_mode).map_err(|e| {
                    io::Error::new(e.kind(), format!("binding http.listen unix:{}: {e}", path.display()))
                })?;
                let meta = std::fs::metadata(path)?;
                (
                    Bound::Unix(listener),
                    None,
                    Some((path.clone(), (meta.dev(), meta.ino()))),
                )
            }
        };
        match &bound {
            Bound::Tcp(l) => l.set_nonblocking(true)?,
            Bound::Unix(l) => l.set_nonblocking(true)?,
        }
        let (wake_read, wake) = io::pipe()?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            token,
            backend,
            draining: false.into(),
            stopping: false.into(),
            open: Default::default(),
            counts: Counts::default(),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("lote-http-accept".into())
                .spawn(move || accept_loop(&shared, &bound, &wake_read))?
        };
        log::info!(
            "http: listening on {}",
            match local_addr {
                Some(addr) => addr.to_string(),
                None => config.listen.spelled(),
            }
        );
        Ok(Listener {
            shared,
            wake: Some(wake),
            accept: Some(accept),
            local_addr,
            socket,
        })
    }

    /// The TCP address bound (the port when `listen` asked for port 0);
    /// `None` for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket's path; `None` for TCP.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|(path, _)| path.as_path())
    }

    /// From now on every request but `GET /healthz` is answered 503 +
    /// Retry-After, and connections close after their answer. Requests
    /// already past this check finish and are answered.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, closes every connection (an answer being prepared is
    /// still written), joins every thread, removes the Unix socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Relaxed);
        drop(self.wake.take());
        let threads = accept.join().unwrap_or_default();
        // No connection is admitted any more; wake those waiting to read.
        for socket in self.shared.open.lock().sockets.values() {
            let _ = socket.shutdown(Shutdown::Read);
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some((path, identity)) = &self.socket {
            let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *identity);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
        log::info!("http: stopped");
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds a Unix socket at `path` with permissions `mode`, replacing a
/// socket file nobody listens on.
fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket; stop it, or listen elsewhere",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; lote does not replace it",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// The accept thread's body: admit or refuse each connection until the
/// wake pipe hangs up. Returns the connection threads still to be joined.
fn accept_loop(shared: &Arc<Shared>, bound: &Bound, wake: &PipeReader) -> Vec<JoinHandle<()>> {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    loop {
        // Sleeps until a connection arrives or `stop` drops the pipe's write end.
        let mut fds = [
            PollFd::new(bound.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("http: waiting for connections failed ({e}); trying again");
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        }
        if fds[1].any().unwrap_or(true) || shared.stopping.load(Ordering::Relaxed) {
            return threads;
        }
        match bound.accept() {
            Ok(stream) => {
                if let Some(thread) = admit(shared, stream) {
                    threads.push(thread);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                log::warn!("http: accepting a connection failed ({e}); trying again");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
        // Join the threads that ended, so the list stays within max_connections.
        let (ended, live): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
        for thread in ended {
            let _ = thread.join();
        }
        threads = live;
    }
}

/// Starts a thread for `stream`, or refuses it with a 503 when
/// `max_connections` are open (or no thread can be started).
fn admit(shared: &Arc<Shared>, stream: Stream) -> Option<JoinHandle<()>> {
    let id = {
        let mut open = shared.open.lock();
        if open.sockets.len() >= shared.config.max_connections {
            drop(open);
            let why = format!(
                "lote has http.max_connections ({}) connections open",
                shared.config.max_connections
            );
            refuse(shared, stream, &why);
            return None;
        }
        let Ok(clone) = stream.try_clone() else {
            return None;
        };
        let id = open.next;
        open.next += 1;
        open.sockets.insert(id, clone);
        id
    };
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("lote-http-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                // Leaves `open` however the thread ends.
                let _open = Registered { shared: &shared, id };
                serve::connection(&shared, Conn::new(stream));
            })
    };
    match thread {
        Ok(thread) => Some(thread),
        Err(e) => {
            // The stream went with the closure; its clone answers.
            let clone = shared.open.lock().sockets.remove(&id);
            log::warn!("http: cannot start a connection thread ({e}); refusing the connection");
            if let Some(clone) = clone {
                refuse(shared, clone, "lote cannot start a thread for this connection");
            }
            None
        }
    }
}

/// A connection's entry in `serve::Open`, removed when the thread ends.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.open.lock().sockets.remove(&self.id);
    }
}

/// Answers 503 + Retry-After without reading the request, and closes. Bytes
/// the client already sent are read and dropped first (without waiting for
/// more), so the close does not reset the connection under the answer.
fn refuse(shared: &Shared, mut stream: Stream, why: &str) {
    shared.counts.refused();
    let response = serve::unavailable(shared, why);
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE));
    let _ = stream.write_all(&response.bytes(false));
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0; 4096];
        for _ in 0..16 {
            match io::Read::read(&mut stream, &mut sink) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}
