//! An uplink an edge box can trust (SPEC §3.12), against real servers on
//! 127.0.0.1: a TLS server (rustls) with a CA, server and client
//! certificates made here with the `openssl` command line; the checks at
//! start (`tls`, `token_file`); gzip bodies; proxies from the environment
//! through a real CONNECT proxy. Environment variables are set only in child
//! processes (the real `lote` binary), never in this one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{text, Setup};
use lote::handler::http::{Compress, HttpConfig, HttpHandler, TlsFiles};
use lote::{CallContext, Failure, Handler, Item, StopHandle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

// ---------------------------------------------------------------- the PKI

/// A test PKI in a temp dir: `ca` signs `server` (for 127.0.0.1) and
/// `client`; `other_ca` signs `stranger`, a client certificate the server
/// does not know.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca", 30);
        pki.ca("other_ca", 30);
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            30,
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth", 30);
        pki.leaf("stranger", "other_ca", "extendedKeyUsage=clientAuth", 30);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `openssl <args>` in the PKI's directory; fails the test saying to
    /// install openssl when it is missing.
    fn openssl(&self, args: &[&str]) {
        let output = match Command::new("openssl").args(args).current_dir(self.dir.path()).output() {
            Ok(output) => output,
            Err(e) => panic!(
                "these tests make their certificates with the openssl command line, which cannot run ({e}); install openssl (apt-get install openssl)"
            ),
        };
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `<name>.pem` + `<name>.key`: a self-signed CA valid `days` (negative:
    /// expired since; `x509 -req -signkey`, as `req -x509` refuses that).
    fn ca(&self, name: &str, days: i32) {
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        self.key_and_csr(name, &format!("lote test {name}"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-signkey",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    /// `<name>.key` (P-256) and `<name>.csr` for the subject `CN=<cn>`.
    fn key_and_csr(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    /// `<name>.pem` + `<name>.key`: a certificate signed by `ca`.
    fn leaf(&self, name: &str, ca: &str, extensions: &str, days: i32) {
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(&ext, format!("basicConstraints=CA:FALSE\n{extensions}\n")).unwrap();
        self.key_and_csr(name, name);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

// ------------------------------------------------------------- the server

/// A request as the server saw it.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// An HTTP/1.1 server on 127.0.0.1, TLS or not, answering every request
/// `200 ok`; what it saw goes to `seen`, every refused handshake to
/// `refused`. Stopped and joined when dropped.
struct Server {
    url: String,
    seen: Receiver<Seen>,
    refused: Receiver<String>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<thread::JoinHandle<()>>,
}

/// The server side of TLS: `server.pem`, and with `client_ca` a client
/// certificate signed by it is required.
fn tls_server_config(pki: &Pki, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    tls_server_config_as(pki, "server", client_ca)
}

/// The same, presenting `<name>.pem`.
fn tls_server_config_as(pki: &Pki, name: &str, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(pki.path(&format!("{ca}.pem"))).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

impl Server {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}/items");
        let (seen_tx, seen) = mpsc::channel();
        let (refused_tx, refused) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for tcp in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(tcp) = tcp else { continue };
                    serve(tcp, tls.clone(), &seen_tx, &refused_tx);
                }
            })
        };
        Server {
            url,
            seen,
            refused,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the server saw no request")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: one request, one answer.
fn serve(tcp: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, seen: &Sender<Seen>, refused: &Sender<String>) {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let result = match tls {
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut stream = rustls::StreamOwned::new(conn, tcp.try_clone().unwrap());
            let result = exchange(&mut stream);
            if result.is_ok() {
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            result
        }
        None => exchange(&mut tcp.try_clone().unwrap()),
    };
    match result {
        Ok(request) => {
            let _ = seen.send(request);
        }
        Err(e) => {
            let _ = refused.send(e.to_string());
            // Let the client read the alert before the socket closes: a
            // close with its request unread would reset the connection.
            let _ = tcp.shutdown(Shutdown::Write);
            let _ = std::io::copy(&mut (&tcp).take(1 << 20), &mut std::io::sink());
        }
    }
}

fn exchange(stream: &mut (impl Read + Write)) -> std::io::Result<Seen> {
    let mut reader = BufReader::new(&mut *stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed before the end of the head"));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    drop(reader);
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")?;
    stream.flush()?;
    Ok(Seen { head, body })
}

// ------------------------------------------------------------- the calls

fn config(url: &str, tls: TlsFiles) -> HttpConfig {
    HttpConfig {
        tls,
        timeout: Duration::from_secs(10),
        ..HttpConfig::new(url)
    }
}

fn call(handler: &HttpHandler, payload: &str) -> Result<String, Failure> {
    let stop = StopHandle::new();
    let item = Item::new("item-1", payload);
    let ctx = CallContext::new(&item, 1, None, &stop);
    handler.handle(&ctx, &item)
}

fn trust(pki: &Pki) -> TlsFiles {
    TlsFiles {
        ca_file: Some(pki.path("ca.pem")),
        ..TlsFiles::default()
    }
}

fn identity(pki: &Pki, name: &str) -> TlsFiles {
    TlsFiles {
        cert_file: Some(pki.path(&format!("{name}.pem"))),
        key_file: Some(pki.path(&format!("{name}.key"))),
        ..trust(pki)
    }
}

fn start_error(config: HttpConfig) -> String {
    match HttpHandler::new(config) {
        Ok(handler) => panic!("started: {handler:?}"),
        Err(e) => e,
    }
}

// ------------------------------------------------------------- the tests

#[test]
fn a_server_signed_by_an_unknown_ca_is_refused_with_a_retryable_error_naming_ca_file() {
    let pki = Pki::new();
    let server = Server::start(Some(tls_server_config(&pki, None)));
    // The default trust (the system's store) does not know the test CA.
    let handler = HttpHandler::new(config(&server.url, TlsFiles::default())).unwrap();
    let failure = call(&handler, "x").unwrap_err();
    eprintln!("{failure}");
    assert!(failure.is_retryable(), "{failure:?}");
    assert!(
        failure.message.contains("not signed by a CA lote trusts") && failure.message.contains("handler.tls.ca_file"),
        "{failure:?}"
    );
    // Another CA in ca_file: refused the same way.
    let other = TlsFiles {
        ca_file: Some(pki.path("other_ca.pem")),
        ..TlsFiles::default()
    };
    let handler = HttpHandler::new(config(&server.url, other)).unwrap();
    let failure = call(&handler, "x").unwrap_err();
    assert!(
        failure.message.contains("not signed by a CA lote trusts"),
        "{failure:?}"
    );
}

#[test]
fn a_private_ca_in_ca_file_is_trusted() {
    let pki = Pki::new();
    let server = Server::start(Some(tls_server_config(&pki, None)));
    let handler = HttpHandler::new(config(&server.url, trust(&pki))).unwrap();
    assert_eq!(call(&handler, "reading 1").unwrap(), "ok");
    assert_eq!(server.next_seen().body, b"reading 1");
}

#[test]
fn a_server_requiring_a_client_certificate_accepts_cert_and_key_and_refuses_without() {
    let pki = Pki::new();
    let server = Server::start(Some(tls_server_config(&pki, Some("ca"))));

    let handler = HttpHandler::new(config(&server.url, identity(&pki, "client"))).unwrap();
    assert_eq!(call(&handler, "reading 1").unwrap(), "ok");
    assert_eq!(server.next_seen().body, b"reading 1");

    let handler = HttpHandler::new(config(&server.url, trust(&pki))).unwrap();
    let failure = call(&handler, "reading 2").unwrap_err();
    eprintln!("{failure}");
    assert!(failure.is_retryable(), "{failure:?}");
    assert!(
        failure.message.starts_with("TLS: ") && failure.message.contains("handler.tls.cert_file"),
        "{failure:?}"
    );
    assert!(server.refused.recv_timeout(Duration::from_secs(5)).is_ok());

    // A certificate from a CA the server does not know.
    let handler = HttpHandler::new(config(&server.url, identity(&pki, "stranger"))).unwrap();
    let failure = call(&handler, "reading 3").unwrap_err();
    eprintln!("{failure}");
    assert!(
        failure.message.contains("refused lote's client certificate"),
        "{failure:?}"
    );
    assert!(server.seen.try_recv().is_err(), "only the first call got through");
}

#[test]
fn bad_tls_files_are_start_errors_naming_the_file_and_what_is_wrong() {
    let pki = Pki::new();
    let url = "https://127.0.0.1:9/items";
    let show = |files: TlsFiles| {
        let e = start_error(config(url, files));
        eprintln!("{e}");
        e
    };
    let (client_pem, client_key, ca_key) = (pki.path("client.pem"), pki.path("client.key"), pki.path("ca.key"));
    let s = |p: &Path| p.display().to_string();

    // A key that is not the certificate's.
    let e = show(TlsFiles {
        key_file: Some(pki.path("stranger.key")),
        ..identity(&pki, "client")
    });
    assert!(
        e.contains("does not match") && e.contains(&s(&pki.path("stranger.key"))) && e.contains(&s(&client_pem)),
        "{e}"
    );

    // An expired client certificate, and a ca_file whose only CA expired:
    // warnings (below), not refusals — lote keeps taking in work.
    pki.leaf("old", "ca", "extendedKeyUsage=clientAuth", -1);
    assert!(HttpHandler::new(config(url, identity(&pki, "old"))).is_ok());
    pki.ca("old_ca", -1);
    let old_ca = TlsFiles {
        ca_file: Some(pki.path("old_ca.pem")),
        ..TlsFiles::default()
    };
    assert!(HttpHandler::new(config(url, old_ca)).is_ok());
    let setup = Setup::new();
    let checked = setup.config(&format!(
        "source: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: {url}\n  \
         tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
        pki.path("old_ca.pem").display(),
        pki.path("old.pem").display(),
        pki.path("old.key").display()
    ));
    let output = setup.run(&["check", "-c", checked.to_str().unwrap()]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert!(
        all.contains("expired on") && all.contains(&s(&pki.path("old.pem"))),
        "{all}"
    );
    assert!(
        all.contains("still trusts it") && all.contains(&s(&pki.path("old_ca.pem"))),
        "{all}"
    );

    // A ca_file with no certificate in it (a key), a key_file with no key.
    let e = show(TlsFiles {
        ca_file: Some(ca_key.clone()),
        ..TlsFiles::default()
    });
    assert!(e.contains("holds no PEM certificate") && e.contains(&s(&ca_key)), "{e}");
    let e = show(TlsFiles {
        key_file: Some(client_pem.clone()),
        ..identity(&pki, "client")
    });
    assert!(
        e.contains("holds no PEM private key") && e.contains("handler.tls.key_file"),
        "{e}"
    );

    // An encrypted key.
    pki.openssl(&[
        "pkey",
        "-in",
        "client.key",
        "-out",
        "locked.key",
        "-aes256",
        "-passout",
        "pass:secret",
    ]);
    let e = show(TlsFiles {
        key_file: Some(pki.path("locked.key")),
        ..identity(&pki, "client")
    });
    assert!(e.contains("encrypted"), "{e}");

    // A file that is not there; a cert without a key.
    let missing = pki.path("missing.pem");
    let e = show(TlsFiles {
        ca_file: Some(missing.clone()),
        ..TlsFiles::default()
    });
    assert!(e.contains("cannot read it") && e.contains(&s(&missing)), "{e}");
    let e = show(TlsFiles {
        cert_file: Some(client_pem),
        ..TlsFiles::default()
    });
    assert!(e.contains("handler.tls.key_file"), "{e}");
    let e = show(TlsFiles {
        key_file: Some(client_key),
        ..TlsFiles::default()
    });
    assert!(e.contains("handler.tls.cert_file"), "{e}");
}

#[test]
fn compress_gzip_sends_a_gzip_body_that_decodes_to_the_payload() {
    let server = Server::start(None);
    let payload = r#"{"id":"a","priority":0,"payload":"21.5"}"#.repeat(50);
    let handler = HttpHandler::new(HttpConfig {
        compress: Compress::Gzip,
        ..HttpConfig::new(&server.url)
    })
    .unwrap();
    assert_eq!(call(&handler, &payload).unwrap(), "ok");
    let seen = server.next_seen();
    assert_eq!(seen.header("content-encoding"), Some("gzip"), "{}", seen.head);
    assert!(seen.body.len() < payload.len() / 5, "{} bytes", seen.body.len());
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&seen.body[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, payload);

    // compress: none (the default) sends the payload as it is.
    let handler = HttpHandler::new(HttpConfig::new(&server.url)).unwrap();
    call(&handler, "plain").unwrap();
    let seen = server.next_seen();
    assert_eq!((seen.header("content-encoding"), &seen.body[..]), (None, &b"plain"[..]));
}

#[test]
fn token_file_sends_a_bearer_token_that_check_and_debug_never_show() {
    let setup = Setup::new();
    std::fs::create_dir_all(setup.path("state")).unwrap();
    let token = "s3cret-uplink-token";
    std::fs::write(
        setup.path("state/uplink.token"),
        format!("{token}\r\nsecond line ignored\n"),
    )
    .unwrap();

    let server = Server::start(None);
    let handler = HttpHandler::new(HttpConfig {
        token_file: Some(setup.path("state/uplink.token")),
        ..HttpConfig::new(&server.url)
    })
    .unwrap();
    call(&handler, "x").unwrap();
    let seen = server.next_seen();
    assert_eq!(seen.header("authorization"), Some(&*format!("Bearer {token}")));
    assert!(!format!("{handler:?}").contains(token));

    // The config's relative path resolves against state_dir; lote check
    // starts the handler (reading the token) and prints the path only.
    let config = setup.config(&format!(
        "source: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: {}\n  token_file: uplink.token\n  compress: gzip\n",
        server.url
    ));
    let output = setup.run(&["check", "-c", config.to_str().unwrap()]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert!(!all.contains(token), "{all}");
    assert!(
        all.contains(&setup.path("state/uplink.token").display().to_string()),
        "{all}"
    );
    assert!(all.contains("compress: gzip"), "{all}");

    // An empty token file, and a token with an Authorization header: errors.
    std::fs::write(setup.path("state/uplink.token"), "\n").unwrap();
    let output = setup.run(&["check", "-c", config.to_str().unwrap()]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("uplink.token") && all.contains("first line is empty"),
        "{all}"
    );
    let config = setup.config(&format!(
        "source: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: {}\n  token_file: uplink.token\n  headers: {{Authorization: Basic eA==}}\n",
        server.url
    ));
    let output = setup.run(&["check", "-c", config.to_str().unwrap()]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("token_file"), "{all}");
}

#[test]
fn check_refuses_a_key_that_does_not_match_naming_both_files() {
    let pki = Pki::new();
    let setup = Setup::new();
    let config = setup.config(&format!(
        "source: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: https://127.0.0.1:9/items\n  tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("server.key").display(),
    ));
    let output = setup.run(&["check", "-c", config.to_str().unwrap()]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(
        all.contains("does not match") && all.contains("server.key") && all.contains("client.pem"),
        "{all}"
    );
}

// ------------------------------------------------------------- proxies

/// A CONNECT proxy on 127.0.0.1 (ureq tunnels every request through
/// CONNECT, http:// targets too) that records each target it was asked for.
fn start_proxy() -> (String, Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (asked_tx, asked) = mpsc::channel();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let asked = asked_tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                }
                let target = first.split(' ').nth(1).unwrap_or_default().to_string();
                let _ = asked.send(first.trim().to_string());
                let mut client = client;
                let Ok(upstream) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                let mut client_write = client.try_clone().unwrap();
                let pump = thread::spawn(move || {
                    let _ = std::io::copy(&mut reader, &mut up_write);
                    let _ = up_write.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut up_read, &mut client_write);
                let _ = client_write.shutdown(Shutdown::Write);
                let _ = pump.join();
            });
        }
    });
    (url, asked)
}

/// `lote run --once` of one item to `url`, with `env` and no other proxy
/// variable from the test's own environment.
fn run_once(setup: &Setup, url: &str, id: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::fs::write(
        setup.path("items.ndjson"),
        format!("{{\"id\":\"{id}\",\"payload\":\"p\"}}\n"),
    )
    .unwrap();
    let config = setup.config(&format!(
        "source: {{kind: lines, path: {}}}\nhandler:\n  kind: http\n  url: {url}\n  retry: {{attempts: 1}}\nsink: {{kind: jsonl, path: {}, rotate_bytes: 0}}\n",
        setup.path("items.ndjson").display(),
        setup.path(&format!("outcomes-{id}.jsonl")).display(),
    ));
    let mut command = setup.lote(&["run", "--once", "-c", config.to_str().unwrap()]);
    for name in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn http_proxy_from_the_environment_is_used_and_no_proxy_bypasses_it() {
    let setup = Setup::new();
    let server = Server::start(None);
    let (proxy, asked) = start_proxy();
    let target = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/items")
        .to_string();

    let output = run_once(&setup, &server.url, "via-proxy", &[("HTTP_PROXY", &proxy)]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        asked.recv_timeout(Duration::from_secs(5)).unwrap(),
        format!("CONNECT {target} HTTP/1.1")
    );
    assert_eq!(server.next_seen().body, b"p");
    assert!(text(&output).contains("through the proxy"), "{}", text(&output));

    // NO_PROXY (with a space after the comma, as people write it) bypasses it.
    let output = run_once(
        &setup,
        &server.url,
        "direct",
        &[("HTTP_PROXY", &proxy), ("NO_PROXY", "localhost, 127.0.0.1")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(server.next_seen().body, b"p");
    assert!(asked.try_recv().is_err(), "the proxy was asked again");

    // An https proxy variable does not apply to an http:// URL.
    let output = run_once(&setup, &server.url, "https-var", &[("HTTPS_PROXY", &proxy)]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(server.next_seen().body, b"p");
    assert!(asked.try_recv().is_err(), "the proxy was asked for an http:// URL");
}

#[test]
fn https_with_mutual_tls_goes_end_to_end_through_the_proxy() {
    let pki = Pki::new();
    let setup = Setup::new();
    let server = Server::start(Some(tls_server_config(&pki, Some("ca"))));
    let (proxy, asked) = start_proxy();
    std::fs::write(setup.path("items.ndjson"), "{\"id\":\"m\",\"payload\":\"p\"}\n").unwrap();
    let config = setup.config(&format!(
        "source: {{kind: lines, path: {}}}\nhandler:\n  kind: http\n  url: {}\n  retry: {{attempts: 1}}\n  tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\nsink: {{kind: jsonl, path: {}, rotate_bytes: 0}}\n",
        setup.path("items.ndjson").display(),
        server.url,
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display(),
        setup.path("outcomes.jsonl").display(),
    ));
    let output = setup
        .lote(&["run", "--once", "-c", config.to_str().unwrap()])
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env("HTTPS_PROXY", &proxy)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(asked
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .starts_with("CONNECT 127.0.0.1:"));
    assert_eq!(server.next_seen().body, b"p");
    let outcomes = std::fs::read_to_string(setup.path("outcomes.jsonl")).unwrap();
    assert!(outcomes.contains("\"done\""), "{outcomes}");
}

#[test]
fn the_uplink_keys_resolve_against_state_dir_and_the_effective_config_loads_back() {
    use lote::config::{Config, HandlerSpec};
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.path("ca.pem"), dir.path().join("ca.pem")).unwrap();
    std::fs::copy(pki.path("client.key"), dir.path().join("box.key")).unwrap();
    std::fs::write(dir.path().join("uplink.token"), "t0ken\n").unwrap();
    let yaml = format!(
        "state_dir: {}\nsource: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: https://up.example/items\n  tls: {{ca_file: ca.pem, cert_file: {}, key_file: box.key}}\n  token_file: uplink.token\n  compress: gzip\n",
        dir.path().display(),
        pki.path("client.pem").display()
    );
    let config = Config::from_yaml(&yaml, Path::new("uplink.yaml")).unwrap();
    let HandlerSpec::Http(http) = &config.handler else {
        panic!("{:?}", config.handler)
    };
    assert_eq!(http.tls.ca_file.as_deref(), Some(&*dir.path().join("ca.pem")));
    assert_eq!(http.tls.cert_file, Some(pki.path("client.pem")));
    assert_eq!(http.token_file.as_deref(), Some(&*dir.path().join("uplink.token")));
    assert_eq!(http.compress, Compress::Gzip);
    let effective = config.effective_yaml();
    let again = Config::from_yaml(&effective, Path::new("effective.yaml")).unwrap();
    assert_eq!(again, config, "{effective}");

    // Unknown keys and values are refused at their place.
    for (bad, expect) in [
        ("  tls: {ca: x}\n", "ca"),
        ("  compress: brotli\n", "gzip"),
        ("  tls: {key_file: k}\n", "handler.tls.key_file"),
        (
            "  headers: {Content-Encoding: br}\n  compress: gzip\n",
            "Content-Encoding",
        ),
    ] {
        let yaml = format!(
            "state_dir: {}\nsource: {{kind: lines, path: x}}\nhandler:\n  kind: http\n  url: https://up.example/items\n{bad}",
            dir.path().display()
        );
        let e = Config::from_yaml(&yaml, Path::new("uplink.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{bad}: {e}");
    }
}

/// A reload starts the handler again (`Parts::build` calls
/// `HandlerSpec::start`), so it reads the token file again.
#[test]
fn a_reload_reads_the_token_file_again() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let setup = Setup::new();
    let server = Server::start(None);
    let spool = setup.path("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(setup.path("state")).unwrap();
    let token = setup.path("state/uplink.token");
    std::fs::write(&token, "first-token\n").unwrap();
    let config = setup.config(&format!(
        "source: {{kind: spool, path: {}}}\nhandler:\n  kind: http\n  url: {}\n  token_file: uplink.token\nsink: {{kind: jsonl, path: outcomes.jsonl, rotate_bytes: 0}}\n",
        spool.display(),
        server.url
    ));
    let log = setup.path("lote.log");
    let mut child = setup
        .lote(&["run", "-c", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let drop_in = |name: &str| {
        let staged = setup.path(name);
        std::fs::write(&staged, name).unwrap();
        std::fs::rename(&staged, spool.join(name)).unwrap();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop_in("one");
        assert_eq!(server.next_seen().header("authorization"), Some("Bearer first-token"));
        std::fs::write(&token, "second-token\n").unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("config reloaded")
        {
            assert!(started.elapsed() < Duration::from_secs(10), "no reload");
            thread::sleep(Duration::from_millis(20));
        }
        drop_in("two");
        assert_eq!(server.next_seen().header("authorization"), Some("Bearer second-token"));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            !logged.contains("first-token") && !logged.contains("second-token"),
            "{logged}"
        );
    }));
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let status = child.wait().unwrap();
    if let Err(panic) = result {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::panic::resume_unwind(panic);
    }
    assert_eq!(status.code(), Some(0));
}

/// With no `ca_file`, lote trusts the system's store: here the one
/// `SSL_CERT_FILE` names (as OpenSSL would), holding the test CA.
#[test]
fn by_default_the_system_trust_store_is_trusted() {
    let pki = Pki::new();
    let setup = Setup::new();
    let server = Server::start(Some(tls_server_config(&pki, None)));
    let ca = pki.path("ca.pem").display().to_string();

    let output = run_once(&setup, &server.url, "trusted", &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(server.next_seen().body, b"p");
    let outcomes = std::fs::read_to_string(setup.path("outcomes-trusted.jsonl")).unwrap();
    assert!(outcomes.contains("\"done\""), "{outcomes}");

    // A store without the test CA: the item fails, saying why.
    let other = pki.path("other_ca.pem").display().to_string();
    let output = run_once(&setup, &server.url, "untrusted", &[("SSL_CERT_FILE", &other)]);
    let outcomes = std::fs::read_to_string(setup.path("outcomes-untrusted.jsonl")).unwrap_or_default();
    assert!(
        outcomes.contains("not signed by a CA lote trusts"),
        "{outcomes}\n{}",
        text(&output)
    );
}

#[test]
fn an_expired_ca_in_a_ca_bundle_is_left_out_and_the_others_trusted() {
    let pki = Pki::new();
    pki.ca("old_ca", -1);
    pki.leaf(
        "old_server",
        "old_ca",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        30,
    );
    let bundle = pki.path("bundle.pem");
    let text = [pki.path("old_ca.pem"), pki.path("ca.pem")].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&bundle, text.concat()).unwrap();
    let files = TlsFiles {
        ca_file: Some(bundle),
        ..TlsFiles::default()
    };

    let current = Server::start(Some(tls_server_config(&pki, None)));
    let handler = HttpHandler::new(config(&current.url, files.clone())).unwrap();
    assert_eq!(call(&handler, "x").unwrap(), "ok");

    // A server whose chain ends at the expired CA is refused.
    let stale = Server::start(Some(tls_server_config_as(&pki, "old_server", None)));
    let handler = HttpHandler::new(config(&stale.url, files)).unwrap();
    let failure = call(&handler, "x").unwrap_err();
    assert!(
        failure.message.contains("not signed by a CA lote trusts"),
        "{failure:?}"
    );
}
