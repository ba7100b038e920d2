//! Stage two for `source:`: each kind's engine config.

use std::path::Path;
use std::time::Duration;

use crate::config::raw::{self, RawSource};
use crate::config::SourceSpec;
use crate::source::lines::{LinesConfig, LinesFormat};
use crate::source::spool::{SpoolConfig, SpoolPriority};
use crate::source::SqliteSourceConfig;
use crate::spec::format_duration;
use crate::spec::{absolute, Check, Result, MAX_BUSY_TIMEOUT, MAX_BYTES, MAX_DURATION};

impl Check<'_> {
    pub(super) fn source(
        &self,
        raw: Option<RawSource>,
        state_dir: &Path,
        every: Option<Duration>,
    ) -> Result<SourceSpec> {
        let Some(raw) = raw else {
            return Err(self.doc.whole("`source:` is missing").with_key("source"));
        };
        Ok(match raw {
            RawSource::Spool(s) => {
                let Some(path) = s.path else {
                    return self.err(
                        "source.path",
                        "is missing; expected the spool directory, e.g. path: ./spool",
                    );
                };
                self.path("source.path", &path)?;
                let d = SpoolConfig::new(absolute(state_dir, &path));
                let max_bytes = match s.max_bytes {
                    None => d.max_bytes,
                    Some(b) => self.bytes_at_most("source.max_bytes", b.0, MAX_BYTES)?,
                };
                if max_bytes == 0 {
                    return self.err(
                        "source.max_bytes",
                        "is 0, so no file could be processed; expected a size like 16MiB",
                    );
                }
                let priority = match s.priority {
                    None => d.priority,
                    Some(SpoolPriority::JsonField(name)) if name.trim().is_empty() => {
                        return self.err(
                            "source.priority.json_field",
                            "is empty; expected a JSON field name, e.g. {json_field: priority}",
                        )
                    }
                    Some(priority) => priority,
                };
                SourceSpec::Spool(SpoolConfig {
                    on_done: s.on_done.unwrap_or(d.on_done),
                    priority,
                    stable_for: self.at_most(
                        "source.stable_for",
                        s.stable_for.map_or(d.stable_for, |t| t.0),
                        MAX_DURATION,
                    )?,
                    max_bytes,
                    stream: false,
                    dir: d.dir,
                })
            }
            RawSource::Lines(l) => {
                let Some(path) = l.path else {
                    return self.err(
                        "source.path",
                        "is missing; expected a file of items, one per line, or \"-\" for standard input",
                    );
                };
                self.path("source.path", &path)?;
                let path = if path.as_os_str() == "-" {
                    if let Some(every) = every {
                        return Err(self.doc.error_at(
                            "source.path",
                            &["source.path", "session.every"],
                            format!(
                                "is \"-\" (standard input), which can be read only once, but `session.every` ({}) \
                                 starts a session on a period; expected a file, or no `every`",
                                format_duration(every)
                            ),
                        ));
                    }
                    None
                } else {
                    Some(absolute(state_dir, &path))
                };
                let d = LinesConfig::stdin();
                let max_bytes = match l.max_bytes {
                    None => d.max_bytes,
                    Some(b) => self.usize_bytes("source.max_bytes", b.0)?,
                };
                if max_bytes == 0 {
                    return self.err(
                        "source.max_bytes",
                        "is 0, so no line could be processed; expected a size like 1MiB",
                    );
                }
                let format = l.format.unwrap_or_else(|| default_format(path.as_deref()));
                SourceSpec::Lines(LinesConfig {
                    path,
                    format,
                    max_bytes,
                })
            }
            RawSource::Sqlite(s) => self.sqlite_source(s, state_dir)?,
        })
    }

    fn sqlite_source(&self, s: raw::RawSqliteSource, state_dir: &Path) -> Result<SourceSpec> {
        let Some(path) = s.path else {
            return self.err(
                "source.path",
                "is missing; expected the SQLite file holding the work table",
            );
        };
        let Some(table) = s.table else {
            return self.err("source.table", "is missing; expected the name of the work table");
        };
        self.path("source.path", &path)?;
        let d = SqliteSourceConfig::new(absolute(state_dir, &path), table);
        let config = SqliteSourceConfig {
            id_column: s.id_column.unwrap_or(d.id_column),
            payload_column: s.payload_column.unwrap_or(d.payload_column),
            priority_column: s.priority_column.unwrap_or(d.priority_column),
            status_column: s.status_column.unwrap_or(d.status_column),
            pending: s.pending.unwrap_or(d.pending),
            running: s.running.unwrap_or(d.running),
            done: s.done.unwrap_or(d.done),
            failed: s.failed.unwrap_or(d.failed),
            busy_timeout: self.at_most(
                "source.busy_timeout",
                s.busy_timeout.map_or(d.busy_timeout, |t| t.0),
                MAX_BUSY_TIMEOUT,
            )?,
            stream: false,
            path: d.path,
            table: d.table,
        };
        let names = [
            ("table", Some(&config.table)),
            ("id_column", Some(&config.id_column)),
            ("payload_column", Some(&config.payload_column)),
            ("priority_column", config.priority_column.as_ref()),
            ("status_column", Some(&config.status_column)),
        ];
        for (key, name) in names {
            if let Some(name) = name {
                if !crate::sql::is_identifier(name) {
                    return self.err(
                        &format!("source.{key}"),
                        format!("`{name}` is not a plain SQL name; expected letters, digits and `_` only"),
                    );
                }
            }
        }
        let values = [
            ("pending", &config.pending),
            ("running", &config.running),
            ("done", &config.done),
            ("failed", &config.failed),
        ];
        for (i, (key, value)) in values.iter().enumerate() {
            if value.is_empty() {
                return self.err(
                    &format!("source.{key}"),
                    "is empty; expected the status value that means it",
                );
            }
            if let Some((other, _)) = values[..i].iter().find(|(_, v)| v == value) {
                return self.err(
                    &format!("source.{key}"),
                    format!("is `{value}`, the same as `{other}`; expected four different status values"),
                );
            }
        }
        Ok(SourceSpec::Sqlite(config))
    }
}

/// SPEC §3.6: a lines source reads NDJSON when its path ends `.ndjson` or
/// `.jsonl` and `format:` is not given; text otherwise (stdin included).
fn default_format(path: Option<&Path>) -> LinesFormat {
    use std::os::unix::ffi::OsStrExt;
    match path.map(|p| p.as_os_str().as_bytes()) {
        Some(p) if p.ends_with(b".ndjson") || p.ends_with(b".jsonl") => LinesFormat::Ndjson,
        _ => LinesFormat::Text,
    }
}
