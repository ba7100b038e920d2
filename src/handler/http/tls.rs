//! `handler.tls`: whom an https uplink trusts and who the box says it is.
//! Read once when the handler starts (`lote check` starts it too), so a
//! file that is missing, unreadable, of the wrong kind, expired or not
//! matching its partner is a start error naming the file; and the words a
//! TLS failure at call time is reported in.
//!
//! # Choices
//!
//! - **Default trust: the system's store** (SPEC §3.12): the bundle and
//!   directory OpenSSL would use (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured),
//!   so a box trusts what its administrator installed. A box without one (a
//!   minimal image without ca-certificates) falls back to the Mozilla roots
//!   built into lote (webpki-roots, through ureq), with a warning.
//! - **`ca_file` replaces the default**, as curl's `--cacert` does: an
//!   uplink pinned to a private CA must not also accept any public CA's
//!   certificate for its host. To trust both, point `ca_file` at a bundle
//!   holding both (`cat /etc/ssl/certs/ca-certificates.crt private-ca.pem`).
//! - **Expiry at start is a warning, never a refusal**: refusing to start
//!   would stop the box taking in data too. An expired client certificate
//!   is used (the server's refusal is then a retryable failure, and the
//!   breaker holds the backlog). In a `ca_file`, expired certificates
//!   beside a valid one are left out (a bundle may carry an old root); if
//!   every one has expired, they are all trusted, with the warning. `notBefore` is not checked: a box without a
//!   real-time clock may boot in 1970, and the call's own failure says so.
//! - **At call time every TLS failure is retryable**: an untrusted server,
//!   a name mismatch or a refused client certificate is a configuration
//!   problem a retry alone will not fix, but on a store-and-forward box it is
//!   fixed at the far end or by a reload, and the backlog must still be
//!   there then. Retryable failures are what the breaker counts, so a
//!   breaker (`when_open: wait`) holds the queue instead of dead-lettering
//!   it item by item; the message names the key to check.

use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, InconsistentKeys};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use super::TlsFiles;

/// Largest PEM file read: far above any certificate chain or CA bundle
/// (the Mozilla bundle is about 220 KB), far below a mistake like a log file.
const MAX_PEM_BYTES: u64 = 16 << 20;

/// The ureq TLS settings `files` ask for, checked. `https`: whether the
/// uplink uses TLS at all; the system store is read only then.
pub(super) fn tls_config(files: &TlsFiles, https: bool, now: SystemTime) -> Result<TlsConfig, String> {
    let roots = match &files.ca_file {
        Some(ca_file) => ca_roots(ca_file, now)?,
        None if https => system_roots(),
        None => RootCerts::WebPki,
    };
    let client_cert = match (&files.cert_file, &files.key_file) {
        (None, None) => None,
        (Some(cert_file), Some(key_file)) => Some(client_cert(cert_file, key_file)?),
        (Some(_), None) => {
            return Err(
                "handler.tls.cert_file is set without handler.tls.key_file; mutual TLS needs both (the certificate chain and its private key)"
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "handler.tls.key_file is set without handler.tls.cert_file; mutual TLS needs both (the certificate chain and its private key)"
                    .into(),
            )
        }
    };
    Ok(TlsConfig::builder().root_certs(roots).client_cert(client_cert).build())
}

/// `ca_file`: every certificate in it, at least one of them valid now.
fn ca_roots(path: &Path, now: SystemTime) -> Result<RootCerts, String> {
    let key = "handler.tls.ca_file";
    let (certs, ..) = read_pem(key, path)?;
    if certs.is_empty() {
        return Err(no_certificate(key, path));
    }
    // A date lote cannot read counts as valid: rustls judges it.
    let valid: Vec<_> = certs
        .iter()
        .filter(|cert| not_after(cert.der()).is_none_or(|t| t >= now))
        .cloned()
        .collect();
    if valid.is_empty() {
        // Every one expired: trusted anyway (webpki does not judge an
        // anchor's dates), and `expiry_warnings` says so.
        return Ok(RootCerts::new_with_certs(&certs));
    }
    // Expired ones beside a valid one are left out (`expiry_warnings`).
    // webpki does not look at a trust anchor's dates: an expired CA would
    // still be trusted if it were passed on.
    Ok(RootCerts::new_with_certs(&valid))
}

/// The system's trust store, or the built-in Mozilla roots when it is empty.
fn system_roots() -> RootCerts {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        log::debug!("http handler: reading the system trust store: {error}");
    }
    if found.certs.is_empty() {
        log::warn!(
            "http handler: no certificate found in the system trust store (install the ca-certificates package, or set handler.tls.ca_file); trusting the Mozilla roots built into lote"
        );
        return RootCerts::WebPki;
    }
    log::debug!(
        "http handler: trusting {} certificates from the system trust store",
        found.certs.len()
    );
    found
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .into()
}

/// `cert_file` + `key_file`: a chain of at least one certificate, and the
/// private key of its first (its expiry is a warning: `expiry_warnings`).
fn client_cert(cert_file: &Path, key_file: &Path) -> Result<ClientCert, String> {
    let cert_key = "handler.tls.cert_file";
    let key_key = "handler.tls.key_file";
    let (chain, ..) = read_pem(cert_key, cert_file)?;
    if chain.is_empty() {
        return Err(no_certificate(cert_key, cert_file));
    }
    let (_, key, text) = read_pem(key_key, key_file)?;
    // The same first key again, as rustls takes it (ureq's key kind is
    // not public).
    let rustls_key = PrivateKeyDer::from_pem_slice(&text).ok();
    let (Some(key), Some(rustls_key)) = (key, rustls_key) else {
        let text = String::from_utf8_lossy(&text);
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(format!(
                "{key_key} {}: the private key is encrypted; lote needs it unencrypted, protected by the file's permissions (`openssl pkey -in {0} -out plain.key`)",
                key_file.display()
            ));
        }
        return Err(format!(
            "{key_key} {}: holds no PEM private key; expected -----BEGIN PRIVATE KEY----- (PKCS#8), -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----",
            key_file.display()
        ));
    };
    // What ureq will build on the first connection, built now: it panics
    // there on a key that does not fit the certificate.
    let provider = rustls::crypto::ring::default_provider();
    let der_chain: Vec<CertificateDer<'static>> =
        chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect();
    rustls::sign::CertifiedKey::from_der(der_chain, rustls_key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => format!(
            "{key_key} {} does not match the certificate in {cert_key} {}; use the private key the certificate was issued for",
            key_file.display(),
            cert_file.display()
        ),
        rustls::Error::InconsistentKeys(_) | rustls::Error::InvalidCertificate(_) => format!(
            "{cert_key} {}: the first certificate cannot be read ({e}); expected the box's certificate first, then its intermediates",
            cert_file.display()
        ),
        other => format!(
            "{key_key} {}: the private key cannot be used ({other}); expected an RSA, ECDSA (P-256, P-384) or Ed25519 key",
            key_file.display()
        ),
    })?;
    Ok(ClientCert::new_with_certs(&chain, key))
}

/// What has expired in `files` at `now`, as warnings (`lote check` prints
/// them, the daemon logs them): never a refusal to start, which would stop
/// the box taking in data too. An expired client certificate is still sent
/// (the server's refusal is a retryable failure, and the breaker holds the
/// backlog); in a `ca_file`, expired certificates beside a valid one are
/// left out, and if all have expired, all are trusted. A file that cannot
/// be read gives no warning here: starting the handler refuses it.
pub(super) fn expiry_warnings(files: &TlsFiles, now: SystemTime) -> Vec<String> {
    let mut warnings = Vec::new();
    let when = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if let Some(path) = &files.ca_file {
        let key = "handler.tls.ca_file";
        if let Ok((certs, ..)) = read_pem(key, path) {
            let expired: Vec<(usize, SystemTime)> = certs
                .iter()
                .enumerate()
                .filter_map(|(n, cert)| not_after(cert.der()).filter(|t| *t < now).map(|t| (n + 1, t)))
                .collect();
            if !certs.is_empty() && expired.len() == certs.len() {
                let last = expired.iter().map(|(_, t)| *t).max().unwrap_or(now);
                warnings.push(format!(
                    "{key} {}: {} expired (the last on {}); lote still trusts it so the uplink keeps working, but put the CA's current certificate there (or check the box's clock)",
                    path.display(),
                    if certs.len() == 1 {
                        "its certificate has".to_string()
                    } else {
                        format!("all {} certificates in it have", certs.len())
                    },
                    when(last)
                ));
            } else {
                for (n, at) in expired {
                    warnings.push(format!(
                        "{key} {}: certificate {n} of {} expired on {}; it is left out, the others are trusted",
                        path.display(),
                        certs.len(),
                        when(at)
                    ));
                }
            }
        }
    }
    if let Some(path) = &files.cert_file {
        let key = "handler.tls.cert_file";
        let leaf_expiry = read_pem(key, path)
            .ok()
            .and_then(|(chain, ..)| chain.first().and_then(|leaf| not_after(leaf.der())));
        if let Some(at) = leaf_expiry.filter(|t| *t < now) {
            warnings.push(format!(
                "{key} {}: the certificate expired on {}; the uplink will likely refuse it (calls fail and are retried): renew it, then reload lote (or check the box's clock)",
                path.display(),
                when(at)
            ));
        }
    }
    warnings
}

/// The certificates and the first private key in a PEM file, and its text.
type Pem = (Vec<Certificate<'static>>, Option<PrivateKey<'static>>, Vec<u8>);

fn read_pem(key: &str, path: &Path) -> Result<Pem, String> {
    use std::io::Read;
    let cannot = |e: &dyn std::fmt::Display| format!("{key} {}: cannot read it: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut text = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{key} {}: is larger than {} MiB; expected a PEM file of certificates or a key",
            path.display(),
            MAX_PEM_BYTES >> 20
        ));
    }
    let (mut certs, mut first_key) = (Vec::new(), None);
    for item in ureq::tls::parse_pem(&text) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(PemItem::PrivateKey(k)) => {
                first_key.get_or_insert(k);
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{key} {}: is not valid PEM: {e}", path.display())),
        }
    }
    Ok((certs, first_key, text))
}

fn no_certificate(key: &str, path: &Path) -> String {
    format!(
        "{key} {}: holds no PEM certificate; expected one or more -----BEGIN CERTIFICATE----- blocks",
        path.display()
    )
}

/// A certificate's `notAfter`, read from its DER (RFC 5280 §4.1): the
/// validity is the fifth field of the TBSCertificate, after an optional
/// `[0]` version, the serial number, the signature algorithm and the
/// issuer. `None` when the DER is not shaped so (rustls then judges the
/// certificate when it is used) or the date is outside what std can hold.
/// Hand-written rather than an X.509 crate: one field, a few lines.
pub(super) fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (0x30, cert, _) = tlv(cert)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let mut rest = tbs;
    if let (0xa0, _, after) = tlv(rest)? {
        rest = after;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (0x30, validity, _) = tlv(rest)? else { return None };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, not_after, _) = tlv(after_not_before)?;
    der_time(tag, not_after)
}

/// One DER element at the start of `der`: its tag, its contents, what follows.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows.
fn der_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let digits = rest.strip_suffix('Z')?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| &digits[at..at + 2];
    humantime::parse_rfc3339(&format!(
        "{year:04}-{}-{}T{}:{}:{}Z",
        field(0),
        field(2),
        field(4),
        field(6),
        field(8)
    ))
    .ok()
}

/// A transport error that is a TLS failure, in words that say what to
/// check; `None` for every other transport error.
pub(super) fn tls_failure(error: &ureq::Error, host: &str, has_client_cert: bool) -> Option<String> {
    let tls = match error {
        ureq::Error::Rustls(e) => e,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    let trust = "check handler.tls.ca_file (the CA that signed the server's certificate)";
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!("TLS: the server's certificate is not signed by a CA lote trusts ({tls}); {trust}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!(
            "TLS: the server's certificate has expired ({tls}); renew it on the server, or check the box's clock"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!("TLS: the server's certificate is not valid yet ({tls}); check the box's clock"),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("TLS: the server's certificate is not valid for {host} ({tls}); check handler.url"),
        rustls::Error::InvalidCertificate(_) => format!("TLS: the server's certificate is refused ({tls}); {trust}"),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure,
        ) if has_client_cert => format!(
            "TLS: the server refused lote's client certificate ({tls}); check handler.tls.cert_file and key_file against the CA the server expects"
        ),
        rustls::Error::AlertReceived(_) if !has_client_cert => format!(
            "TLS: the server ended the handshake ({tls}); if it requires a client certificate, set handler.tls.cert_file and key_file"
        ),
        _ => format!("TLS: {tls}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate shape: SEQUENCE { SEQUENCE { [0], INTEGER,
    /// SEQUENCE, SEQUENCE, SEQUENCE { time, time } } }.
    fn cert_with(not_before: (u8, &str), not_after: (u8, &str), version: bool) -> Vec<u8> {
        fn el(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if body.len() < 0x80 {
                out.push(body.len() as u8);
            } else {
                out.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            out.extend_from_slice(body);
            out
        }
        let validity = [
            el(not_before.0, not_before.1.as_bytes()),
            el(not_after.0, not_after.1.as_bytes()),
        ]
        .concat();
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(0xa0, &el(0x02, &[2])));
        }
        tbs.extend(el(0x02, &[1; 20]));
        tbs.extend(el(0x30, &[0; 10]));
        tbs.extend(el(0x30, &[0; 200]));
        tbs.extend(el(0x30, &validity));
        tbs.extend(el(0x30, &[0; 40]));
        el(0x30, &[el(0x30, &tbs), el(0x30, &[0; 12])].concat())
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        let at = |s| humantime::parse_rfc3339(s).unwrap();
        let c = cert_with((0x17, "200101000000Z"), (0x17, "491231235959Z"), true);
        assert_eq!(not_after(&c), Some(at("2049-12-31T23:59:59Z")));
        let c = cert_with((0x17, "200101000000Z"), (0x17, "990102030405Z"), false);
        assert_eq!(not_after(&c), Some(at("1999-01-02T03:04:05Z")));
        let c = cert_with((0x17, "200101000000Z"), (0x18, "20510607080910Z"), true);
        assert_eq!(not_after(&c), Some(at("2051-06-07T08:09:10Z")));
        // Not a time, or not a certificate: no answer, no panic.
        assert_eq!(not_after(&cert_with((0x17, "x"), (0x17, "2001"), true)), None);
        assert_eq!(not_after(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(not_after(b""), None);
        for cut in 0..c.len() {
            let _ = not_after(&c[..cut]);
        }
    }
}
