//! Secrets: credentials written in config as references and resolved late.
//!
//! A config names a secret as `${env:NAME}` or `${file:PATH}`; the loader resolves it into a
//! [`Secret`], whose `Debug` and `Display` print `*****`, so a secret cannot reach a log line, an
//! error message or `sluice validate`'s output by being formatted. The only way to the value is
//! [`Secret::expose`], which is easy to grep for.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};

/// A credential's value. Formatting it never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps an already resolved value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to a client library. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Resolves a config value: `${env:NAME}`, `${file:PATH}` or a literal.
    ///
    /// Errors name the reference (the variable or the path), never a value.
    pub fn resolve(written: &str) -> Result<Secret, String> {
        let Some(inner) = written.strip_prefix("${").and_then(|s| s.strip_suffix('}')) else {
            return Ok(Secret(written.to_owned()));
        };
        if let Some(name) = inner.strip_prefix("env:") {
            return std::env::var(name)
                .map(Secret)
                .map_err(|_| format!("resolving secret: environment variable `{name}` is not set"));
        }
        if let Some(path) = inner.strip_prefix("file:") {
            return std::fs::read_to_string(path)
                // A trailing newline is an artefact of how files are written, not part of the secret.
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| format!("resolving secret: reading file `{path}`: {e}"));
        }
        Err(format!(
            "resolving secret: unknown reference `${{{}:…}}`; use `${{env:NAME}}` or `${{file:PATH}}`",
            inner.split(':').next().unwrap_or_default()
        ))
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
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = String::deserialize(deserializer)?;
        Secret::resolve(&written).map_err(de::Error::custom)
    }
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
    fn resolves_env_and_file_references() {
        // SAFETY-free: the variable name is unique to this test.
        let var = "SLUICE_TEST_SECRET_RESOLVE";
        // set_var is safe in edition 2024 only inside unsafe; use a file instead and check env
        // resolution with a variable every environment has.
        let home = std::env::var("PATH").unwrap();
        assert_eq!(Secret::resolve("${env:PATH}").unwrap().expose(), home);
        let err = Secret::resolve(&format!("${{env:{var}}}")).unwrap_err();
        assert!(err.contains(var));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let s = Secret::resolve(&format!("${{file:{}}}", p.display())).unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert!(Secret::resolve("${vault:x}").is_err());
        assert_eq!(Secret::resolve("plain").unwrap().expose(), "plain");
    }
}
