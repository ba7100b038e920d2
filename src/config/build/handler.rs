//! Stage two for `handler:`: the handler's engine config and the call
//! policy around it (`qos`, `timeout`, `retry`, `breaker`).

use std::path::Path;
use std::time::Duration;

use crate::config::raw::{self, RawHandler};
use crate::config::{ConfigError, HandlerSpec, PolicySpec};
use crate::handler::exec::{ExecConfig, ExecHandler};
use crate::handler::http::{HttpConfig, HttpHandler};
use crate::policy::{BreakerConfig, RetryPolicy, WhenOpen};
use crate::session::Qos;
use crate::spec::{absolute, Check, Result, MAX_DURATION, MAX_TRIES};

impl Check<'_> {
    pub(super) fn handler(
        &mut self,
        raw: Option<RawHandler>,
        state_dir: &Path,
    ) -> Result<(HandlerSpec, PolicySpec, Qos)> {
        let Some(raw) = raw else {
            return Err(self.doc.whole("`handler:` is missing").with_key("handler"));
        };
        let (policy, qos) = self.policy(raw.policy())?;
        let spec = match raw {
            RawHandler::Exec(e) => HandlerSpec::Exec(self.exec(e, state_dir)?),
            RawHandler::Http(h) => HandlerSpec::Http(self.http(h, policy.timeout)?),
            RawHandler::Noop(_) => HandlerSpec::Noop,
        };
        // What `lote run` builds, built here too (it changes nothing): the
        // program resolved in PATH, the URL parsed, the method and headers
        // known to the client.
        let built = match &spec {
            HandlerSpec::Exec(config) => ExecHandler::new(config.clone()).map(drop),
            HandlerSpec::Http(config) => HttpHandler::new(config.clone()).map(drop),
            HandlerSpec::Noop => Ok(()),
        };
        built.map_err(|why| self.start_error(&why))?;
        Ok((spec, policy, qos))
    }

    fn policy(&mut self, p: &raw::RawPolicy) -> Result<(PolicySpec, Qos)> {
        let qos = p.qos.unwrap_or_default();
        let timeout = self.opt_at_most("handler.timeout", p.timeout.map(|t| t.0), MAX_DURATION)?;
        if timeout == Some(Duration::ZERO) {
            return self.err(
                "handler.timeout",
                "is 0; expected a per-call limit like 30s, or omit it for none",
            );
        }
        let d = RetryPolicy::default();
        let retry = match &p.retry {
            None => d,
            Some(r) => RetryPolicy {
                attempts: r.attempts.unwrap_or(d.attempts),
                backoff: r.backoff.map_or(d.backoff, |b| b.0),
                max_backoff: r.max_backoff.map_or(d.max_backoff, |b| b.0),
                jitter: r.jitter.unwrap_or(d.jitter),
                max_retry_after: r.max_retry_after.map_or(d.max_retry_after, |m| m.0),
            },
        };
        // The engine's checks and words; the key is the field its message names.
        retry
            .validate()
            .map_err(|why| self.engine_error("handler.retry", &why))?;
        self.count("handler.retry.attempts", u64::from(retry.attempts), 1..=MAX_TRIES)?;
        self.at_most("handler.retry.backoff", retry.backoff, MAX_DURATION)?;
        self.at_most("handler.retry.max_backoff", retry.max_backoff, MAX_DURATION)?;
        self.at_most("handler.retry.max_retry_after", retry.max_retry_after, MAX_DURATION)?;
        if qos == Qos::AtMostOnce && p.retry.as_ref().is_some_and(|r| r.attempts.is_some_and(|a| a > 1)) {
            self.warnings.push(
                "handler.retry: `qos: at_most_once` never retries, so `retry.attempts` has no effect".to_string(),
            );
        }
        let (breaker, when_open) = match &p.breaker {
            None => (None, WhenOpen::default()),
            Some(b) => {
                let d = BreakerConfig::default();
                let config = BreakerConfig {
                    failures: b.failures.unwrap_or(d.failures),
                    open_for: b.open_for.map_or(d.open_for, |t| t.0),
                    half_open_probes: b.half_open_probes.unwrap_or(d.half_open_probes),
                };
                config
                    .validate()
                    .map_err(|why| self.engine_error("handler.breaker", &why))?;
                self.at_most("handler.breaker.open_for", config.open_for, MAX_DURATION)?;
                let when_open = b.when_open.unwrap_or_default();
                (Some(config), when_open)
            }
        };
        Ok((
            PolicySpec {
                retry,
                breaker,
                when_open,
                timeout,
            },
            qos,
        ))
    }

    /// An engine validation message ("retry attempts is 0; expected …") as
    /// an error on `section.<field>`, the field being its second word.
    fn engine_error(&self, section: &str, why: &str) -> ConfigError {
        let field = why.split_whitespace().nth(1).unwrap_or_default();
        let key = format!("{section}.{field}");
        self.doc.error_at(&key, &[&key, section], why)
    }

    /// A handler's own refusal ("exec handler: program x is not in PATH …")
    /// as an error on the key its first word names.
    fn start_error(&self, why: &str) -> ConfigError {
        let why = why.split_once("handler: ").map_or(why, |(_, rest)| rest);
        let word = why
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .find(|w| !w.is_empty())
            .unwrap_or_default();
        let key = match word {
            "program" | "command" => "handler.command",
            "env" => "handler.env",
            "workdir" => "handler.workdir",
            "url" => "handler.url",
            "method" => "handler.method",
            "header" => "handler.headers",
            _ => "handler",
        };
        self.doc.error_at(
            key,
            &[key, "handler"],
            format!("{why}; expected a handler `lote run` can start"),
        )
    }

    fn exec(&mut self, e: raw::RawExec, state_dir: &Path) -> Result<ExecConfig> {
        let d = ExecConfig::default();
        let Some(command) = e.command else {
            return self.err(
                "handler.command",
                format!(
                    "is missing; expected the program and its arguments: {}",
                    crate::spec::ARGV_EXPECTED
                ),
            );
        };
        let command = command.0;
        let Some(program) = command.first() else {
            return self.err(
                "handler.command",
                "is empty; expected the program and its arguments, e.g. [\"/usr/bin/foo\", \"--flag\"]",
            );
        };
        if program.is_empty() {
            return self.err(
                "handler.command",
                "starts with an empty program name; expected e.g. \"/usr/bin/foo\"",
            );
        }
        self.check_program(program)?;
        let fatal_exit_codes = e.fatal_exit_codes.unwrap_or(d.fatal_exit_codes);
        if let Some(bad) = fatal_exit_codes.iter().find(|c| !(1..=255).contains(*c)) {
            return self.err(
                "handler.fatal_exit_codes",
                format!("contains {bad}; expected exit codes from 1 to 255 (0 means success)"),
            );
        }
        let env: Vec<(String, String)> = e.env.map_or(d.env, |m| m.into_iter().collect());
        for (name, value) in &env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return self.err(
                    &format!("handler.env.{name}"),
                    "is not a valid environment variable; expected a name without `=` and values without NUL bytes",
                );
            }
        }
        Ok(ExecConfig {
            command,
            fatal_exit_codes,
            output_limit: match e.output_limit {
                None => d.output_limit,
                Some(b) => self.usize_bytes("handler.output_limit", b.0)?,
            },
            kill_grace: self.at_most(
                "handler.kill_grace",
                e.kill_grace.map_or(d.kill_grace, |t| t.0),
                MAX_DURATION,
            )?,
            env,
            workdir: match e.workdir {
                Some(w) => {
                    self.path("handler.workdir", &w)?;
                    Some(absolute(state_dir, &w))
                }
                None => None,
            },
        })
    }

    /// An absolute program must exist and be executable.
    fn check_program(&self, program: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let executable =
            |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        let path = Path::new(program);
        if path.is_absolute() && !executable(path) {
            return self.err(
                "handler.command",
                format!("the program {program} is not an executable file; expected the full path of a program"),
            );
        }
        // A bare name is looked up in PATH by the handler itself (see `handler`).
        Ok(())
    }

    fn http(&self, h: raw::RawHttp, timeout: Option<Duration>) -> Result<HttpConfig> {
        let d = HttpConfig::default();
        let Some(url) = h.url else {
            return self.err(
                "handler.url",
                "is missing; expected the URL to send items to, e.g. https://example.com/items",
            );
        };
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
            return self.err(
                "handler.url",
                format!("`{url}` is not an http(s) URL; expected http://host[:port]/path or https://…"),
            );
        }
        let method = h.method.unwrap_or(d.method).to_ascii_uppercase();
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return self.err(
                "handler.method",
                format!("`{method}` is not an HTTP method; expected e.g. POST or PUT"),
            );
        }
        let headers: Vec<(String, String)> = h.headers.map_or(d.headers, |m| m.into_iter().collect());
        for (name, value) in &headers {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) || value.contains(['\r', '\n']) {
                return self.err(
                    &format!("handler.headers.{name}"),
                    "is not a valid header; expected a name of letters, digits and -, and a one-line value",
                );
            }
        }
        let connect_timeout = self.at_most(
            "handler.connect_timeout",
            h.connect_timeout.map_or(d.connect_timeout, |t| t.0),
            MAX_DURATION,
        )?;
        if connect_timeout.is_zero() {
            return self.err("handler.connect_timeout", "is 0; expected a limit like 5s");
        }
        Ok(HttpConfig {
            url,
            method,
            headers,
            connect_timeout,
            timeout: timeout.unwrap_or(d.timeout),
            output_limit: match h.output_limit {
                None => d.output_limit,
                Some(b) => self.usize_bytes("handler.output_limit", b.0)?,
            },
        })
    }
}
