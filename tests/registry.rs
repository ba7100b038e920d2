//! The rule that keeps adding a kind cheap (ARCHITECTURE "Adding a kind"):
//! a source, handler or sink kind lives in its own file and one line of its
//! folder's registry, so the config and the daemon never name one. Checked
//! here on the source text: outside their test modules, `src/config/` and
//! `src/daemon/` spell no registered kind name as a string and match no
//! spec enum variant. (The handler kind `http` shares its name with the
//! top-level `http:` section the config reads: for it only the variant,
//! `HandlerSpec::Http`, is looked for.)

use std::fs;
use std::path::Path;

/// Every `.rs` file under `dir`, with its text before the test module.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|f| f != "tests.rs") {
            let text = fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            out.push((path.display().to_string(), code));
        }
    }
}

#[test]
fn the_config_and_the_daemon_name_no_kind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["config", "daemon"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 5, "the config and daemon sources are where they were");
    let kinds = [
        ("SourceSpec", lote::source::KINDS),
        ("HandlerSpec", lote::handler::KINDS),
        ("SinkSpec", lote::sink::KINDS),
    ];
    let mut found = Vec::new();
    for (file, code) in &files {
        for (spec, names) in kinds {
            for name in names {
                let variant = format!("{spec}::{}{}", name[..1].to_uppercase(), &name[1..]);
                let spelled = (*name != "http").then(|| format!("\"{name}\""));
                for needle in spelled.into_iter().chain([variant]) {
                    if code.contains(&needle) {
                        found.push(format!("{file}: {needle}"));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "a kind is named outside its own file and registry line:\n{}",
        found.join("\n")
    );
}
