//! Secrets: credentials written in config as references and resolved late, and kept out of
//! every log line.
//!
//! A config names a value kept elsewhere as `${env:NAME}` or `${file:PATH}`, as the whole value
//! or inside a longer one (`"Bearer ${env:TOKEN}"`); [`interpolate`] resolves every reference of
//! a string (the config loader runs it over every value, so no reference is ever taken
//! literally), and `$${` writes a literal `${`. A credential field holds a [`Secret`], whose
//! `Debug` and `Display` print `*****`, so a secret cannot reach a log line, an error message
//! or `sluice validate`'s output by being formatted. The only way to the value is
//! [`Secret::expose`], which is easy to grep for.
//!
//! Formatting is not the only way into a log: a library may log the value it was handed (the
//! AWS SDK logs an S3 access key id at debug level). So every secret and every value a
//! reference resolved to is also [`register`]ed, and the binary's log writer passes each line
//! through [`redact`] before it is written.

use std::borrow::Cow;
use std::fmt;
use std::sync::RwLock;

use serde::de::{Deserialize, Deserializer};

use crate::error::Invalid;

/// A credential's value. Formatting it never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps an already resolved value, and registers it for [`redact`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The value, for handing to a client library. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Takes the value as it is: references were resolved when the config was loaded (see
    /// [`interpolate`]), and resolving again would let a resolved value that happens to hold
    /// `${…}` reach into the environment.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// Resolves every `${env:NAME}` and `${file:PATH}` in `written`; `$${` is a literal `${`.
/// Values that did not change are borrowed. Each resolved value is [`register`]ed: what a
/// config keeps out of its own text is treated as a secret wherever it lands.
///
/// Errors name the reference (the variable or the path), never a value; an unknown kind
/// (`${vault:x}`, `${HOME}`) or an unclosed `${` is an error, never a literal.
pub fn interpolate(written: &str) -> Result<Cow<'_, str>, Invalid> {
    if !written.contains("${") {
        return Ok(Cow::Borrowed(written));
    }
    let mut out = String::with_capacity(written.len());
    let mut rest = written;
    while let Some(at) = rest.find("${") {
        // `$${` escapes: one `$` is dropped and the `${` kept.
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let inner_start = at + 2;
        let Some(len) = rest[inner_start..].find('}') else {
            return Err(
                "`${` without a closing `}`: write `${env:NAME}` or `${file:PATH}` (or `$${` for a literal `${`)"
                    .into(),
            );
        };
        let inner = &rest[inner_start..inner_start + len];
        out.push_str(&resolve_one(inner)?);
        rest = &rest[inner_start + len + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// One reference's value: `env:NAME` or `file:PATH`.
fn resolve_one(inner: &str) -> Result<String, String> {
    let value = if let Some(name) = inner.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("resolving `${{env:{name}}}`: environment variable `{name}` is not set"))?
    } else if let Some(path) = inner.strip_prefix("file:") {
        std::fs::read_to_string(path)
            // A trailing newline is an artefact of how files are written, not part of the value.
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("resolving `${{file:{path}}}`: reading the file: {e}"))?
    } else {
        let kind = inner.split(':').next().unwrap_or_default();
        return Err(format!(
            "unknown reference `${{{kind}…}}`: write `${{env:NAME}}` or `${{file:PATH}}` (or `$${{` for a literal `${{`)"
        ));
    };
    register(&value);
    Ok(value)
}

/// The most values kept for redaction; past it the oldest go (by then, refreshed tokens that
/// expired long ago).
const MAX_REGISTERED: usize = 4096;

/// Values never to be written to a log, longest first (so a secret containing another is
/// replaced whole).
static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// The shortest value [`redact`] hides. A shorter one would be found all over every log line
/// (a token `t` turns "partitions" into "par*****i*****ions"), and a secret that short
/// protects nothing anyway.
pub const MIN_REDACTED_LEN: usize = 4;

/// Remembers `value` as one [`redact`] must hide (values shorter than [`MIN_REDACTED_LEN`]
/// are ignored).
pub fn register(value: &str) {
    if value.chars().count() < MIN_REDACTED_LEN {
        return;
    }
    let Ok(mut all) = REGISTERED.write() else { return };
    if all.iter().any(|v| v == value) {
        return;
    }
    if all.len() >= MAX_REGISTERED {
        all.remove(0);
    }
    all.push(value.to_owned());
    all.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every registered value replaced by `*****`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let Ok(all) = REGISTERED.read() else { return Cow::Borrowed(text) };
    let mut out = Cow::Borrowed(text);
    for v in all.iter() {
        if out.contains(v.as_str()) {
            out = Cow::Owned(out.replace(v.as_str(), "*****"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formatting_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "***** *****");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn references_are_resolved_whole_or_inside_a_value() {
        let path = std::env::var("PATH").unwrap();
        assert_eq!(interpolate("${env:PATH}").unwrap(), path);
        assert_eq!(interpolate("a ${env:PATH} b").unwrap(), format!("a {path} b"));
        let err = interpolate("${env:SLUICE_TEST_SURELY_UNSET}").unwrap_err();
        assert!(err.0.contains("SLUICE_TEST_SURELY_UNSET") && err.0.contains("not set"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let written = format!("postgres://u:${{file:{}}}@h/db", p.display());
        let got = interpolate(&written).unwrap();
        assert_eq!(got, "postgres://u:s3cret@h/db");

        assert!(interpolate("${vault:x}").unwrap_err().0.contains("unknown reference"));
        assert!(interpolate("${HOME}").unwrap_err().0.contains("unknown reference"));
        assert!(interpolate("x ${env:PATH").unwrap_err().0.contains("closing"));
        assert_eq!(interpolate("plain").unwrap(), "plain");
        assert_eq!(interpolate("costs $5, {a}").unwrap(), "costs $5, {a}");
        assert_eq!(interpolate("$${env:PATH} stays").unwrap(), "${env:PATH} stays");
    }

    #[test]
    fn registered_values_are_redacted_longest_first() {
        register("sluice-test-tok");
        register("sluice-test-token-long");
        assert_eq!(redact("a sluice-test-token-long b sluice-test-tok c"), "a ***** b ***** c");
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        register("t");
        assert_eq!(redact("partitions"), "partitions", "too short to hide");
        let _ = Secret::new("sluice-test-via-new");
        assert_eq!(redact("[sluice-test-via-new]"), "[*****]");
    }
}
