//! HTTP/1.x on one connection: reading a request's head (httparse) and its
//! body (Content-Length or chunked, bounded), writing an answer.
//!
//! # Invariants
//!
//! - Nothing is buffered beyond [`MAX_HEAD`] for a head and `max_body` for a
//!   body: a larger head is a 400, a larger body a 413 before it is read.
//! - Every read waits at most until the request's deadline (`read_timeout`
//!   after its first byte), so a client sending a byte now and then cannot
//!   hold a connection longer than that.
//! - Bytes read past the end of one request (a pipelined next one) stay in
//!   the buffer for the next [`Conn::read_head`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The longest request head read; a longer one is a 400.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines in a head.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// How much a read for a head asks for (a small buffer per idle connection).
const HEAD_STEP: usize = 8 * 1024;
/// How much a read for a body asks for, straight into the body.
const BODY_STEP: usize = 64 * 1024;
/// Refusing with a body left unread: read and drop at most this much, for at
/// most [`LINGER_TIME`], so the client reads the answer instead of a reset.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// A connection's socket: TCP or Unix.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed, or the socket failed, or an idle connection timed
    /// out: close without an answer.
    Gone,
    /// The request did not arrive by its deadline: 408, then close.
    TimedOut,
    /// Not HTTP as lote reads it: 400 with this text, then close.
    Bad(String),
    /// The body is larger than `max_body`: 413, then close.
    TooLarge,
}

/// How the request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request's head, as far as lote needs it.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// HTTP/1.1 and not `Connection: close`, or HTTP/1.0 with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    pub framing: Framing,
    /// Lowercased, without parameters.
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    /// `Expect: 100-continue`: the client waits for a 100 before the body.
    pub expect_continue: bool,
    /// The whole request (head and body) must have arrived by then.
    pub deadline: Instant,
}

/// An answer.
pub struct Response {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Retry-After, WWW-Authenticate, Allow.
    pub headers: Vec<(&'static str, String)>,
}

/// A connection: its socket and the bytes read but not yet used.
pub struct Conn {
    pub stream: Stream,
    /// `buf[pos..]` is read and not yet consumed.
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes into the buffer, waiting until `deadline` at most.
    /// `Ok(0)` is the end of the stream.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        read_until(&mut self.stream, &mut self.buf, HEAD_STEP, deadline)
    }

    /// Waits up to `idle` for a request to start, then up to `read_timeout`
    /// after its first byte for its head.
    pub fn read_head(&mut self, idle: Duration, read_timeout: Duration) -> Result<Head, ReadError> {
        let mut deadline = Instant::now() + read_timeout;
        if self.pending().is_empty() {
            match self.fill(Instant::now() + idle) {
                Ok(0) | Err(ReadError::TimedOut) => return Err(ReadError::Gone),
                Ok(_) => deadline = Instant::now() + read_timeout,
                Err(e) => return Err(e),
            }
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(self.pending()) {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
                    let head = head(&request, deadline)?;
                    self.pos += len;
                    return Ok(head);
                }
                Ok(httparse::Status::Complete(_)) => return Err(too_large_head()),
                Ok(httparse::Status::Partial) if self.pending().len() > MAX_HEAD => return Err(too_large_head()),
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(ReadError::Bad(format!("the request is not HTTP/1.x ({e})"))),
            }
            match self.fill(deadline)? {
                0 => return Err(ReadError::Gone),
                _ => continue,
            }
        }
    }

    /// Reads the body framed by `head`, refusing at once one larger than
    /// `max` (a declared length) or as soon as it grows past `max` (chunked).
    pub fn read_body(&mut self, head: &Head, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        match head.framing {
            Framing::None => {}
            Framing::Length(n) if n > max as u64 => return Err(ReadError::TooLarge),
            Framing::Length(n) => {
                // At most max_body, and untouched memory until the bytes come.
                body.reserve_exact(n as usize);
                self.take(&mut body, n as usize, head.deadline)?
            }
            Framing::Chunked => loop {
                let line = self.line(head.deadline)?;
                let size = match httparse::parse_chunk_size(&line) {
                    Ok(httparse::Status::Complete((_, size))) => size,
                    _ => {
                        return Err(ReadError::Bad(
                            "a chunk size line of the chunked body is malformed".into(),
                        ))
                    }
                };
                if size == 0 {
                    // Trailer lines, up to the empty one.
                    while self.line(head.deadline)? != b"\r\n" {}
                    break;
                }
                if size > (max - body.len()) as u64 {
                    return Err(ReadError::TooLarge);
                }
                self.take(&mut body, size as usize, head.deadline)?;
                if self.line(head.deadline)? != b"\r\n" {
                    return Err(ReadError::Bad(
                        "a chunk of the chunked body does not end in CRLF".into(),
                    ));
                }
            },
        }
        Ok(body)
    }

    /// Appends the next `n` bytes to `out`.
    fn take(&mut self, out: &mut Vec<u8>, mut n: usize, deadline: Instant) -> Result<(), ReadError> {
        let have = self.pending().len().min(n);
        out.extend_from_slice(&self.buf[self.pos..self.pos + have]);
        self.pos += have;
        n -= have;
        // The rest straight from the socket, never past the body's end.
        while n > 0 {
            match read_until(&mut self.stream, out, n.min(BODY_STEP), deadline)? {
                0 => return Err(ReadError::Gone),
                got => n -= got,
            }
        }
        Ok(())
    }

    /// The next line, CRLF included (a chunk size or a trailer).
    fn line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(end) = self.pending().iter().position(|&b| b == b'\n') {
                let line = self.pending()[..=end].to_vec();
                self.pos += end + 1;
                return Ok(line);
            }
            if self.pending().len() > MAX_CHUNK_LINE {
                return Err(ReadError::Bad("a line of the chunked body is too long".into()));
            }
            if self.fill(deadline)? == 0 {
                return Err(ReadError::Gone);
            }
        }
    }

    /// Sends `100 Continue`, for a client waiting to send its body.
    pub fn send_continue(&mut self, write_timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(write_timeout))?;
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    }

    /// Writes `response` in one write (head and body together: no small
    /// segments for Nagle to hold back).
    pub fn answer(&mut self, response: &Response, keep_alive: bool, write_timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(write_timeout))?;
        self.stream.write_all(&response.bytes(keep_alive))
    }

    /// Closes after an answer given with a body left unread: shuts the
    /// write side (the client sees the end of the answer), then reads and
    /// drops what still comes, within a bound, so closing with unread data
    /// does not reset the connection before the client reads the answer.
    pub fn linger(mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + LINGER_TIME;
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            self.pos = self.buf.len();
            match self.fill(until) {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    }
}

fn too_large_head() -> ReadError {
    ReadError::Bad(format!("the request head is larger than {} KiB", MAX_HEAD / 1024))
}

/// Appends one read of at most `step` bytes to `out`, waiting until
/// `deadline` at most. `Ok(0)` is the end of the stream.
fn read_until(stream: &mut Stream, out: &mut Vec<u8>, step: usize, deadline: Instant) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::TimedOut);
    }
    stream.set_read_timeout(Some(left)).map_err(|_| ReadError::Gone)?;
    let old = out.len();
    out.resize(old + step, 0);
    let read = loop {
        match stream.read(&mut out[old..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    out.truncate(old + *read.as_ref().unwrap_or(&0));
    match read {
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Err(ReadError::TimedOut),
        Err(_) => Err(ReadError::Gone),
    }
}

/// The head lote needs out of a parsed request.
fn head(request: &httparse::Request, deadline: Instant) -> Result<Head, ReadError> {
    let bad = |why: String| Err(ReadError::Bad(why));
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return bad("the request line is incomplete".into());
    };
    let mut keep_alive = version == 1;
    let mut length = None;
    let mut chunked = false;
    let mut content_type = None;
    let mut authorization = None;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            if header.name.eq_ignore_ascii_case("authorization") {
                return bad("the Authorization header is not text".into());
            }
            continue;
        };
        let value = value.trim();
        let name = header.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                let Some(n) = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                else {
                    return bad(format!("Content-Length {value:?} is not a number"));
                };
                if length.is_some_and(|m| m != n) {
                    return bad("the request has two different Content-Length headers".into());
                }
                length = Some(n);
            }
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => chunked = true,
            "transfer-encoding" => {
                return bad(format!(
                    "Transfer-Encoding {value:?} is not supported; send the body with Content-Length, or chunked"
                ))
            }
            "content-type" => {
                let kind = value.split(';').next().unwrap_or("").trim();
                content_type = Some(kind.to_ascii_lowercase());
            }
            "authorization" => authorization = Some(value.to_string()),
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return bad("the request has both Content-Length and Transfer-Encoding".into()),
        (_, true) => Framing::Chunked,
        (Some(0) | None, false) => Framing::None,
        (Some(n), false) => Framing::Length(n),
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Head {
        method: method.to_string(),
        path,
        keep_alive,
        framing,
        content_type,
        authorization,
        expect_continue,
        deadline,
    })
}

impl Response {
    pub fn new(code: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            code,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A JSON body.
    pub fn json(code: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(code, "application/json", body)
    }

    /// An error: `{"error": why}`, which says what was wrong and what to do.
    pub fn error(code: u16, why: impl Into<String>) -> Response {
        Response::json(code, &serde_json::json!({ "error": why.into() }))
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn bytes(&self, keep_alive: bool) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.code,
            reason(self.code),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}
