//! Configuration error reporting shared by the gateway and the connector.
//!
//! Both ends read strict TOML. This module turns a parse or validation failure into
//! `file:line:column: key: message`, so an operator goes straight to the offending line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    /// 1-based column, when the problem has a place.
    pub column: Option<usize>,
    /// Dotted key, e.g. `route[2].tunnel`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (unreadable, missing).
    pub fn whole_file(path: &Path, message: String) -> Self {
        ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file's text, for turning byte offsets into places.
pub struct Located<'a> {
    path: &'a Path,
    src: &'a str,
}

impl<'a> Located<'a> {
    /// The text `src` read from `path`.
    pub fn new(path: &'a Path, src: &'a str) -> Self {
        Located { path, src }
    }

    /// Deserialize the whole file, reporting a failure at its place.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigErrors> {
        toml::from_str(self.src).map_err(|e| {
            let span = e.span();
            let key = span.as_ref().and_then(|s| self.key_at(s.start));
            let message = e.message().trim().to_owned();
            let mut err = self.error(span, "", &message);
            err.key = key;
            ConfigErrors(vec![err])
        })
    }

    /// An error at `span` (or the whole file) about `key`.
    pub fn error(&self, span: Option<Range<usize>>, key: &str, message: &str) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.line_col(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            key: (!key.is_empty()).then(|| key.to_owned()),
            message: message.to_owned(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// Best-effort dotted key for a byte offset: the nearest table header above (with the
    /// index of an array-of-tables entry) plus the key on that line.
    fn key_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.src.len());
        let line_start = self.src[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.src[offset..]
            .find('\n')
            .map_or(self.src.len(), |i| offset + i);
        let line = self.src[line_start..line_end].trim();
        if line.starts_with('[') {
            return self.table_name(line_start + line.len());
        }
        let table = self.table_name(line_start);
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned());
        match (table, key) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (Some(t), None) => Some(t),
            (None, None) => None,
        }
    }

    /// Name of the table in force at `offset`: `https`, or `route[2]` for the third
    /// `[[route]]`.
    fn table_name(&self, offset: usize) -> Option<String> {
        let before = &self.src[..offset.min(self.src.len())];
        let header = before
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))?;
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let name = name.trim();
            let index = before
                .lines()
                .filter(|l| {
                    l.trim()
                        .strip_prefix("[[")
                        .and_then(|h| h.split("]]").next())
                        .map(str::trim)
                        == Some(name)
                })
                .count();
            return Some(format!("{name}[{}]", index.saturating_sub(1)));
        }
        header
            .strip_prefix('[')
            .and_then(|h| h.split(']').next())
            .map(|h| h.trim().to_owned())
    }

    /// The place of `key` in table `table` (`""` for the top level), or of the table's header
    /// when the key is absent or `key` is `None`; `None` when neither is in the file.
    pub fn find(&self, table: &str, key: Option<&str>) -> Option<Range<usize>> {
        let mut current = String::new();
        let mut header_span = None;
        let mut offset = 0;
        for line in self.src.split_inclusive('\n') {
            let t = line.trim();
            let start = offset + (line.len() - line.trim_start().len());
            offset += line.len();
            if t.starts_with('[') {
                current = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
                if current == table {
                    header_span = Some(start..start + t.len());
                }
                continue;
            }
            if current == table
                && let (Some(k), Some((lhs, _))) = (key, t.split_once('='))
                && lhs.trim().trim_matches('"') == k
            {
                return Some(start..start + t.len());
            }
        }
        header_span
    }
}

/// serde `deserialize_with` for a duration written as text (`"500ms"`, `"10s"`, `"2m"`).
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parse a duration such as `500ms`, `10s`, `2m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration `{s}`: {e} (write e.g. \"500ms\", \"10s\", \"2m\")"))
}

/// Most runtime worker threads a file may ask for: beyond this the threads only contend for the
/// same cores and each holds a stack and a run queue.
pub const MAX_WORKERS: usize = 256;

/// Worker threads when a file does not say: one per core the process may run on, which is
/// right for an edge host that runs netwall and little else. On a host shared with the
/// service (two processes on two cores), fewer workers mean fewer wakeups and cross-core
/// hand-offs per request: set `workers` lower there (the benchmark runs one each).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Check a `workers` value: at least one, at most [`MAX_WORKERS`].
pub fn check_workers(n: usize) -> Result<(), String> {
    if (1..=MAX_WORKERS).contains(&n) {
        Ok(())
    } else {
        Err(format!("must be between 1 and {MAX_WORKERS}"))
    }
}

/// The keys that differ between two versions of a file and that a reload does not apply,
/// sorted. `applied` names what a reload does apply: a top-level key (`"route"`) or a key of
/// a table (`"https.certificate"`); a table holding applied keys is compared key by key, and
/// its other changed keys are named `table.key`.
pub fn unapplied_changes(old: &toml::Table, new: &toml::Table, applied: &[&str]) -> Vec<String> {
    let mut keys = Vec::new();
    collect_unapplied(old, new, applied, "", &mut keys);
    keys.sort();
    keys.dedup();
    keys
}

fn collect_unapplied(
    old: &toml::Table,
    new: &toml::Table,
    applied: &[&str],
    prefix: &str,
    out: &mut Vec<String>,
) {
    for k in old.keys().chain(new.keys()) {
        let name = format!("{prefix}{k}");
        if applied.contains(&name.as_str()) {
            continue;
        }
        let inner = format!("{name}.");
        let (a, b) = (old.get(k), new.get(k));
        if applied.iter().any(|p| p.starts_with(&inner))
            && let (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) = (a, b)
        {
            collect_unapplied(a, b, applied, &inner, out);
        } else if a != b {
            out.push(name);
        }
    }
}

#[cfg(test)]
mod unapplied_tests {
    use super::unapplied_changes;

    #[test]
    fn applied_keys_are_skipped_and_tables_holding_them_compared_key_by_key() {
        let old: toml::Table = toml::from_str("a = 1\nb = 2\n[t]\nx = 1\ny = 1\n").expect("toml");
        let new: toml::Table =
            toml::from_str("a = 9\nb = 3\nc = 1\n[t]\nx = 2\ny = 2\n").expect("toml");
        assert_eq!(
            unapplied_changes(&old, &new, &["a", "t.x"]),
            ["b", "c", "t.y"]
        );
        // A table present on one side only is one change.
        let bare: toml::Table = toml::from_str("a = 1\nb = 2\n").expect("toml");
        assert_eq!(unapplied_changes(&old, &bare, &["t.x"]), ["t"]);
    }
}
