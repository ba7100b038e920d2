//! [`ConfigError`]: what was wrong, where (file, line, column, dotted key),
//! and what was expected (SPEC §3.9).
//!
//! serde_yaml's errors carry a line, a column and a path; the key is read off
//! the message and the message is made readable (Rust type names become
//! words; a near-miss key or value gets a "did you mean"). Errors found after
//! parsing name their key, and [`locate`] finds that key in the text, best
//! effort: block mappings, and one-line flow mappings (`{ a: 1, b: 2 }`).

use std::fmt;
use std::path::{Path, PathBuf};

/// A config file lote refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as given.
    pub file: PathBuf,
    /// 1-based; `None` when the error concerns no place in the text (an
    /// unreadable file, a key whose default is at fault).
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The dotted key, like `session.threads` or `handler.retry.jitter`.
    pub key: Option<String>,
    /// What was wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `config.yaml:12:3: session.threads: must be at least 1 (found 0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The text being read, to turn findings into located errors.
pub struct Doc<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Doc<'_> {
    /// An error about `key` (dotted), located where the key is written.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error_at(key, &[key], message)
    }

    /// An error named `key`, located at the first of `places` written in the
    /// text (an alias, or a neighbour when the key itself was left out); if
    /// none is, at the nearest parent section that is.
    pub fn error_at(&self, key: &str, places: &[&str], message: impl Into<String>) -> ConfigError {
        let found = places
            .iter()
            .find_map(|place| locate(self.text, place, false))
            .or_else(|| locate_parent(self.text, key));
        self.make(Some(key.to_string()), found, message.into())
    }

    /// An error at a line and column (1-based) that no key names.
    pub fn at(&self, at: (usize, usize), message: impl Into<String>) -> ConfigError {
        self.make(None, Some(at), message.into())
    }

    /// An error about the file as a whole.
    pub fn whole(&self, message: impl Into<String>) -> ConfigError {
        self.make(None, None, message.into())
    }

    /// An error about the file's first line that holds anything.
    pub fn at_start(&self, message: impl Into<String>) -> ConfigError {
        let first = significant_lines(self.text).first().map(|l| (l.number, l.indent + 1));
        self.make(None, first, message.into())
    }

    fn make(&self, key: Option<String>, at: Option<(usize, usize)>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: at.map(|(line, _)| line),
            column: at.map(|(_, column)| column),
            key,
            message,
        }
    }

    /// A serde_yaml error met while reading one node of a handler tree
    /// (`node` is its dotted path, the error's own path is inside it), at
    /// the key's place in the whole file.
    pub fn node_error(&self, node: &str, err: &serde_yaml::Error) -> ConfigError {
        let mut text = err.to_string();
        if let Some(l) = err.location() {
            text = text.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
        }
        let (inner, body) = match text.split_once(": ") {
            Some((path, body)) if !path.is_empty() && !path.contains(char::is_whitespace) => (Some(path), body),
            _ => (None, text.as_str()),
        };
        // serde_yaml writes `steps[0].retry`; the key path is dotted.
        let base = match inner {
            Some(inner) => format!("{node}.{}", inner.replace('[', ".").replace(']', "")),
            None => node.to_string(),
        };
        let mut key = base.clone();
        let mut message = readable(body);
        if let Some(field) = quoted_after(body, "unknown field `", '`') {
            key = format!("{base}.{field}");
            message.push_str(&did_you_mean(&field, body));
        } else if let Some(variant) = quoted_after(body, "unknown variant `", '`') {
            message.push_str(&did_you_mean(&variant, body));
        } else if let Some(field) = quoted_after(body, "missing field `", '`') {
            key = format!("{base}.{field}");
        }
        let at = locate(self.text, &key, false).or_else(|| locate_parent(self.text, &key));
        self.make(Some(key), at, message)
    }

    /// A serde_yaml error (syntax, type, unknown key …) as a [`ConfigError`].
    pub fn yaml_error(&self, err: &serde_yaml::Error) -> ConfigError {
        let mut text = err.to_string();
        let mut at = err.location().map(|l| (l.line(), l.column()));
        if let Some((line, column)) = at {
            text = text.replacen(&format!(" at line {line} column {column}"), "", 1);
        }
        // "session.threads: invalid type: …": a path is one word before ": ".
        let (path, body) = match text.split_once(": ") {
            Some((path, body)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
                (Some(path.to_string()), body.to_string())
            }
            _ => (None, text.clone()),
        };
        let join = |name: &str| match &path {
            Some(path) => format!("{path}.{name}"),
            None => name.to_string(),
        };
        let mut key = path.clone();
        let mut message = readable(&body);
        if let Some(field) = quoted_after(&body, "unknown field `", '`') {
            key = Some(join(&field));
            message.push_str(&hint_for_unknown(path.as_deref().unwrap_or(""), &field, &body));
        } else if let Some(variant) = quoted_after(&body, "unknown variant `", '`') {
            message.push_str(&did_you_mean(&variant, &body));
        } else if let Some(field) = quoted_after(&body, "missing field `", '`') {
            key = Some(join(&field));
        } else if let Some(dup) = quoted_after(&body, "duplicate entry with key \"", '"') {
            // Reported at the mapping's start; point at the second one.
            let dotted = join(&dup);
            at = locate(self.text, &dotted, true).or(at);
            key = Some(dotted);
            message = format!("{message}; expected each key once per section");
        } else if body.contains("more than one document") {
            at = at.or_else(|| second_document(self.text));
            message = "the file holds more than one YAML document (a second `---` or content after `...`); \
                       expected one document: remove the second one or merge it into the first"
                .to_string();
        } else if body.contains("once its aliases") {
            // The path runs through the expansion (`f[0][3][3]`): name its section.
            key = path
                .as_deref()
                .map(|p| p.split(['.', '[']).next().unwrap_or(p).to_string());
        } else if body.contains("repetition limit exceeded") {
            // serde_yaml gives no place; the first alias is the likeliest.
            at = at.or_else(|| first_alias(self.text)).or_else(|| first_line(self.text));
            message = "aliases (`*name`) repeat their anchors too often; expected a config that writes its \
                       values out"
                .to_string();
        } else if body == "unknown anchor" {
            message = "unknown anchor: this alias (`*name`) names no anchor (`&name`) written before it; expected \
                       the anchor on an earlier value, or the value written out"
                .to_string();
        } else if body.contains("recursion limit exceeded") {
            message = "nested too deep; expected a config nested a few levels deep".to_string();
        } else if body.contains("tab") || char_at(self.text, at) == Some('\t') {
            message.push_str("; expected spaces: YAML cannot be indented with tabs, use spaces");
        } else if body.contains("block sequence entries are not allowed") && char_at(self.text, at) == Some('-') {
            message
                .push_str("; expected a value: a lone `-` starts a list, so quote it (\"-\") to mean standard input");
        } else if path.is_none()
            && (body.contains("mapping values are not allowed") || body.contains("did not find expected key"))
        {
            message.push_str(
                "; expected the keys of one section at one indentation: check the indentation of this line \
                 against the lines above it",
            );
        }
        if at.is_none() {
            at = key
                .as_deref()
                .and_then(|k| locate(self.text, k, false).or_else(|| locate_parent(self.text, k)));
        }
        self.make(key, at, message)
    }
}

/// Where the first alias (`*name` after a space, `[`, `{` or `,`) is written.
fn first_alias(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let chars: Vec<char> = line.chars().collect();
        (1..chars.len())
            .find(|&j| {
                chars[j] == '*'
                    && matches!(chars[j - 1], ' ' | '[' | '{' | ',')
                    && chars.get(j + 1).is_some_and(|c| c.is_alphanumeric())
            })
            .map(|j| (i + 1, j + 1))
    })
}

/// The first line that holds anything.
fn first_line(text: &str) -> Option<(usize, usize)> {
    significant_lines(text).first().map(|l| (l.number, l.indent + 1))
}

/// The text between `start` and the next `end` in `s`.
fn quoted_after(s: &str, start: &str, end: char) -> Option<String> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(rest[..rest.find(end)?].to_string())
}

fn char_at(text: &str, at: Option<(usize, usize)>) -> Option<char> {
    let (line, column) = at?;
    text.lines()
        .nth(line.checked_sub(1)?)?
        .chars()
        .nth(column.checked_sub(1)?)
}

/// serde's wording with Rust's type names made into words.
fn readable(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected path string", "expected a path"),
    ] {
        if out.ends_with(rust) || out.contains(&format!("{rust},")) {
            out = out.replacen(rust, words, 1);
        }
    }
    if let Some(at) = out.find("expected struct ") {
        out.truncate(at);
        out.push_str("expected a mapping (`key: value` lines, indented under the section)");
    }
    out
}

fn hint_for_unknown(section: &str, field: &str, serde_message: &str) -> String {
    if section.is_empty() || section == "." {
        // Keys that belong one level down.
        for (parent, keys) in [
            (
                "session",
                &["threads", "chunk", "max_items", "lote", "deadline", "timer", "every"][..],
            ),
            ("queue", &["capacity", "when_full", "block_timeout"][..]),
        ] {
            if keys.contains(&field) {
                return format!("; `{field}` belongs under `{parent}:`");
            }
        }
    }
    did_you_mean(field, serde_message)
}

/// "; did you mean `threads`?" when one of the backquoted names after
/// "expected" in serde's message is within edit distance 2 of `given`.
pub fn did_you_mean(given: &str, serde_message: &str) -> String {
    let Some((_, expected)) = serde_message.split_once("expected") else {
        return String::new();
    };
    let given_lower = given.to_lowercase().replace('-', "_");
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (levenshtein(&given_lower, name), name))
        .filter(|(distance, _)| *distance <= 2 && *distance < given.chars().count())
        .min_by_key(|(distance, _)| *distance);
    match best {
        Some((_, name)) => format!("; did you mean `{name}`?"),
        None => String::new(),
    }
}

/// Edit distance (insertions, deletions, substitutions) between two words.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// One line that can hold a key: not blank, not a comment, not `---`.
struct Line<'a> {
    /// 1-based.
    number: usize,
    /// Leading spaces.
    indent: usize,
    /// The line after its indentation.
    body: &'a str,
}

fn significant_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let body = raw.trim_start_matches(' ');
            let blank = body.trim().is_empty() || body.starts_with('#') || body == "---" || body == "...";
            (!blank).then(|| Line {
                number: i + 1,
                indent: raw.len() - body.len(),
                body,
            })
        })
        .collect()
}

/// The key a line starts with (`threads` in `threads: 4`), unquoted.
fn key_of(body: &str) -> Option<(&str, &str)> {
    let (key, rest) = if let Some(quote @ ('"' | '\'')) = body.chars().next() {
        let close = body[1..].find(quote)? + 1;
        (&body[1..close], &body[close + 1..])
    } else {
        let colon = body
            .find(": ")
            .or_else(|| body.ends_with(':').then(|| body.len() - 1))?;
        (body[..colon].trim_end(), &body[colon..])
    };
    let rest = rest.strip_prefix(':')?;
    Some((key, rest))
}

/// Where the dotted `key` is written: (line, column), 1-based. With `last`,
/// the last of several equal keys in one section (a duplicate). Block
/// mappings at any depth, and a one-line flow mapping as the last level.
/// Never panics; `None` when the key is not written.
pub fn locate(text: &str, key: &str, last: bool) -> Option<(usize, usize)> {
    let segments: Vec<&str> = key.split('.').collect();
    let mut lines = significant_lines(text);
    let mut range = 0..lines.len();
    let mut parent_indent: Option<usize> = None;
    for (depth, segment) in segments.iter().enumerate() {
        let indent = lines.get(range.start)?.indent;
        let item = |l: &Line| l.body == "-" || l.body.starts_with("- ");
        // A number names an entry of a block list (`steps.1`): its `- `
        // line, whose keys continue past the dash.
        if let (Ok(n), true) = (segment.parse::<usize>(), item(&lines[range.start])) {
            let found = range
                .clone()
                .filter(|&i| lines[i].indent == indent && item(&lines[i]))
                .nth(n)?;
            if depth + 1 == segments.len() {
                return Some((lines[found].number, indent + 1));
            }
            let end = (found + 1..range.end)
                .find(|&j| lines[j].indent <= indent)
                .unwrap_or(range.end);
            let rest = lines[found].body[1..].trim_start_matches(' ');
            let column = lines[found].indent + lines[found].body.len() - rest.len();
            if rest.starts_with('{') {
                let number = lines[found].number;
                return locate_in_flow(rest, &segments[depth + 1..]).map(|col| (number, column + col));
            }
            lines[found].indent = column;
            lines[found].body = rest;
            range = found..end;
            parent_indent = Some(indent);
            continue;
        }
        if parent_indent.is_some_and(|parent| indent <= parent) {
            return None;
        }
        let mut matches = range
            .clone()
            .filter(|&i| lines[i].indent == indent && key_of(lines[i].body).is_some_and(|(k, _)| k == *segment));
        let found = if last && depth + 1 == segments.len() {
            matches.next_back()?
        } else {
            matches.next()?
        };
        let line = &lines[found];
        if depth + 1 == segments.len() {
            return Some((line.number, line.indent + 1));
        }
        let (_, value) = key_of(line.body)?;
        if value.trim_start().starts_with('{') {
            let offset = line.indent + line.body[..line.body.len() - value.len()].chars().count();
            return locate_in_flow(value, &segments[depth + 1..]).map(|col| (line.number, offset + col));
        }
        let end = (found + 1..range.end)
            .find(|&j| lines[j].indent <= line.indent)
            .unwrap_or(range.end);
        range = found + 1..end;
        parent_indent = Some(line.indent);
        if range.is_empty() {
            return None;
        }
    }
    None
}

/// The 1-based column within `flow` of the last of `segments`, each looked
/// for after the previous one (`{ retry: { attempts: 0 } }`).
fn locate_in_flow(flow: &str, segments: &[&str]) -> Option<usize> {
    let mut from = 0;
    for segment in segments {
        let needle = format!("{segment}:");
        let mut search = from;
        loop {
            let at = search + flow.get(search..)?.find(&needle)?;
            let before = flow[..at].chars().next_back();
            if matches!(before, Some('{' | ',' | ' ')) {
                from = at;
                break;
            }
            search = at + needle.len();
        }
    }
    Some(flow[..from].chars().count() + 1)
}

/// The nearest written parent of a dotted key (`handler` for
/// `handler.retry.attempts` when there is no `retry:`).
fn locate_parent(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut key = key;
    while let Some((parent, _)) = key.rsplit_once('.') {
        if let Some(found) = locate(text, parent, false) {
            return Some(found);
        }
        key = parent;
    }
    None
}

/// The line and column where a second YAML document starts: a `---` after
/// content or after another `---`, or content after a `...`. `None` if none
/// is found (serde_yaml's own count is then trusted, without a place).
pub fn second_document(text: &str) -> Option<(usize, usize)> {
    let mut started = false; // a document is open (explicitly or by content)
    let mut ended = false; // a `...` closed it
    for (number, line) in text.split('\n').enumerate() {
        let marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
        };
        let content = !line.trim().is_empty() && !line.trim_start().starts_with('#');
        if marker("---") {
            if started || ended {
                return Some((number + 1, 1));
            }
            started = true;
        } else if marker("...") {
            ended = started;
            started = false;
        } else if content {
            if ended {
                return Some((number + 1, 1));
            }
            started = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
state_dir: ./state
session:
  threads: 4        # workers
  lote: 7

handler:
  kind: exec
  retry: { attempts: 0, jitter: 0.2 }
  breaker:
    failures: 0
sink:
  kind: sqlite
";

    #[test]
    fn keys_are_found_in_block_and_flow_mappings() {
        assert_eq!(locate(TEXT, "state_dir", false), Some((2, 1)));
        assert_eq!(locate(TEXT, "session.threads", false), Some((4, 3)));
        assert_eq!(locate(TEXT, "session.lote", false), Some((5, 3)));
        assert_eq!(locate(TEXT, "handler.breaker.failures", false), Some((11, 5)));
        assert_eq!(locate(TEXT, "handler.retry.attempts", false), Some((9, 12)));
        assert_eq!(locate(TEXT, "handler.retry.jitter", false), Some((9, 25)));
        assert_eq!(locate(TEXT, "sink.kind", false), Some((13, 3)));
    }

    #[test]
    fn missing_keys_are_none_and_parents_stand_in() {
        assert_eq!(locate(TEXT, "session.chunk", false), None);
        assert_eq!(locate(TEXT, "threads", false), None, "not at the top level");
        assert_eq!(locate(TEXT, "handler.retry.backoff", false), None);
        assert_eq!(locate_parent(TEXT, "handler.retry.backoff"), Some((9, 3)));
        assert_eq!(locate_parent(TEXT, "queue.capacity"), None);
    }

    #[test]
    fn locating_never_panics_on_odd_text() {
        for text in [
            "",
            ":",
            "\"",
            "'a",
            "a: {",
            "a:\n\tb: 1",
            "é: ü\n  ö: {ä: 1}",
            "- a\n- b",
            "{a: 1}",
        ] {
            for key in ["a", "a.b", "é.ö.ä", "", "."] {
                let _ = locate(text, key, false);
                let _ = locate(text, key, true);
                let _ = locate_parent(text, key);
            }
        }
    }

    #[test]
    fn near_misses_are_suggested() {
        let serde = "unknown field `thread`, expected one of `threads`, `chunk`, `max_items`";
        assert_eq!(did_you_mean("thread", serde), "; did you mean `threads`?");
        assert_eq!(did_you_mean("xyzzy", serde), "");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("when_ful", "when_full"), 1);
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            readable("invalid type: string \"four\", expected usize"),
            "invalid type: string \"four\", expected a whole number (0 or more)"
        );
        assert_eq!(
            readable("invalid type: string \"x\", expected struct Keys"),
            "invalid type: string \"x\", expected a mapping (`key: value` lines, indented under the section)"
        );
    }

    #[test]
    fn display_names_file_place_and_key() {
        let err = ConfigError {
            file: "config.yaml".into(),
            line: Some(12),
            column: Some(3),
            key: Some("session.threads".into()),
            message: "must be at least 1 (found 0)".into(),
        };
        assert_eq!(
            err.to_string(),
            "config.yaml:12:3: session.threads: must be at least 1 (found 0)"
        );
        let bare = ConfigError {
            line: None,
            column: None,
            key: None,
            ..err
        };
        assert_eq!(bare.to_string(), "config.yaml: must be at least 1 (found 0)");
    }
}
