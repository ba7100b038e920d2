//! The proxy an uplink goes through, from the standard environment
//! variables, chosen once when the handler starts (a reload starts it
//! again; the variables are those of lote's process).
//!
//! ureq's own default (`Proxy::try_from_env`) takes the first of
//! `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` whatever the URL's scheme,
//! ignores a value it cannot parse, and matches `NO_PROXY` entries without
//! trimming the spaces after the commas. lote follows curl instead:
//!
//! - an `https://` URL uses `https_proxy`/`HTTPS_PROXY`, an `http://` URL
//!   `http_proxy`/`HTTP_PROXY`, either falls back to `all_proxy`/`ALL_PROXY`
//!   (lower case first; an empty value counts as unset);
//! - `no_proxy`/`NO_PROXY` is a comma-separated list of host names (a name
//!   also covers its subdomains; a leading `.` or `*.` is allowed), IP
//!   addresses, either with `:port`, or `*` for every host;
//! - a value that is not an `http://` or `https://` proxy URL is a start
//!   error naming the variable (never echoing it: it may hold a password).
//!
//! Every request, `http://` targets included, goes through the proxy as a
//! `CONNECT` tunnel (ureq's way), so TLS stays end to end.

use ureq::http::Uri;
use ureq::{Proxy, ProxyProtocol};

/// The proxy for `uri`, and where it came from (for the start log line:
/// scheme, host and port, never the credentials). `var` reads one
/// environment variable (a test passes its own).
pub(super) fn from_env(uri: &Uri, var: impl Fn(&str) -> Option<String>) -> Result<Option<(Proxy, String)>, String> {
    let set = |name: &&'static str| var(name).filter(|v| !v.trim().is_empty()).map(|v| (*name, v));
    let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let names: [&str; 4] = if https {
        ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
    };
    let Some((name, value)) = names.iter().find_map(set) else {
        return Ok(None);
    };
    if let Some((_, no_proxy)) = ["no_proxy", "NO_PROXY"].iter().find_map(set) {
        if bypasses(&no_proxy, uri) {
            return Ok(None);
        }
    }
    let bad = || {
        format!(
            "the environment variable {name} is not a proxy URL lote can use; expected http://host:port or https://host:port (user:password@ allowed), or unset it"
        )
    };
    let proxy = Proxy::new(value.trim()).map_err(|_| bad())?;
    if !matches!(proxy.protocol(), ProxyProtocol::Http | ProxyProtocol::Https) {
        return Err(bad());
    }
    let described = format!(
        "{}://{}:{} (from {name})",
        proxy.protocol().to_string().to_ascii_lowercase(),
        proxy.host(),
        proxy.port()
    );
    Ok(Some((proxy, described)))
}

/// Whether `no_proxy` names `uri`'s host (and port, where an entry has one).
fn bypasses(no_proxy: &str, uri: &Uri) -> bool {
    let Some(host) = uri.host() else { return false };
    let host = unbracket(host).to_ascii_lowercase();
    let https = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_port(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
            let name = unbracket(&name);
            !name.is_empty() && (host == name || host.strip_suffix(name).is_some_and(|head| head.ends_with('.')))
        })
}

/// `host:port`, `[v6]:port`, `host`, or a bare IPv6 address (several colons).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((v6, after)) = rest.split_once(']') {
            return (v6, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(url: &str, vars: &[(&str, &str)]) -> Result<Option<String>, String> {
        let uri: Uri = url.parse().unwrap();
        from_env(&uri, |name| {
            vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        })
        .map(|found| found.map(|(_, described)| described))
    }

    #[test]
    fn the_proxy_follows_the_scheme_then_all_proxy() {
        let vars = [("HTTPS_PROXY", "http://secure:3128"), ("http_proxy", "plain:8080")];
        assert_eq!(
            choose("https://up.example/items", &vars).unwrap().as_deref(),
            Some("http://secure:3128 (from HTTPS_PROXY)")
        );
        assert_eq!(
            choose("http://up.example/items", &vars).unwrap().as_deref(),
            Some("http://plain:8080 (from http_proxy)")
        );
        let vars = [("https_proxy", "http://lower:1"), ("HTTPS_PROXY", "http://upper:2")];
        assert!(choose("https://x/", &vars).unwrap().unwrap().contains("lower:1"));
        let vars = [("HTTPS_PROXY", " "), ("ALL_PROXY", "http://all:3")];
        assert!(choose("https://x/", &vars).unwrap().unwrap().contains("all:3"));
        assert_eq!(choose("https://x/", &[("HTTP_PROXY", "http://p:1")]).unwrap(), None);
        assert_eq!(choose("https://x/", &[]).unwrap(), None);
    }

    #[test]
    fn no_proxy_matches_names_subdomains_addresses_and_ports() {
        let proxied = |url: &str, no_proxy: &str| {
            choose(
                url,
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("HTTP_PROXY", "http://p:1"),
                    ("NO_PROXY", no_proxy),
                ],
            )
            .unwrap()
            .is_some()
        };
        assert!(!proxied("https://up.example.com/", "localhost, example.com"));
        assert!(!proxied("https://example.com/", "localhost, .example.com"));
        assert!(!proxied("https://a.b.example.com/", "*.example.com"));
        assert!(proxied("https://notexample.com/", "example.com"));
        assert!(!proxied("http://127.0.0.1:8080/", "127.0.0.1"));
        assert!(!proxied("http://127.0.0.1:8080/", "127.0.0.1:8080"));
        assert!(proxied("http://127.0.0.1:8080/", "127.0.0.1:9090"));
        assert!(!proxied("https://UP.Example.com/", "up.example.COM"));
        assert!(!proxied("http://[::1]:8080/", "::1"));
        assert!(!proxied("http://[::1]:8080/", "[::1]:8080"));
        assert!(!proxied("https://anything/", "*"));
        assert!(proxied("https://anything/", ", ,"));
        // no_proxy (lower case) wins over NO_PROXY.
        let vars = [("HTTPS_PROXY", "http://p:1"), ("no_proxy", "x"), ("NO_PROXY", "*")];
        assert!(choose("https://y/", &vars).unwrap().is_some());
    }

    #[test]
    fn a_proxy_lote_cannot_use_is_an_error_naming_the_variable_not_its_value() {
        let err = choose("https://x/", &[("HTTPS_PROXY", "socks5://user:secret@p:1080")]).unwrap_err();
        assert!(err.contains("HTTPS_PROXY") && !err.contains("secret"), "{err}");
        let err = choose("https://x/", &[("ALL_PROXY", "ftp://p")]).unwrap_err();
        assert!(err.contains("ALL_PROXY"), "{err}");
        // Credentials are not in the description either.
        let described = choose("https://x/", &[("HTTPS_PROXY", "http://u:secret@p:3128")])
            .unwrap()
            .unwrap();
        assert_eq!(described, "http://p:3128 (from HTTPS_PROXY)");
    }
}
