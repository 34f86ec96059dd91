//! `${env:NAME}` and `${file:PATH}` in config values, resolved once, when the config is loaded.
//!
//! Every string value of every file is looked at — not only credential fields — because a
//! reference that silently stays literal (a URL that is `${env:HOOK_URL}`) is a config that
//! loads and then fails far from its cause. Map keys are left alone. A reference that does not
//! resolve is a config error at its line; the values references resolve to are registered for
//! log redaction by [`sluice_engine::secret::interpolate`].

use std::borrow::Cow;
use std::path::Path;

use super::ConfigError;
use super::yaml::{Kind, Node};

/// Resolves the references in every scalar value under `root`; errors go to `errors`.
pub fn resolve_all(root: &mut Node, file: &Path, errors: &mut Vec<ConfigError>) {
    // A walk with an explicit stack: the tree is bounded in depth, but nothing here needs to
    // rely on that.
    let mut todo: Vec<(&mut Node, String)> = vec![(root, String::new())];
    while let Some((node, path)) = todo.pop() {
        let line = node.line;
        match &mut node.kind {
            Kind::Scalar { text, .. } => match sluice_engine::secret::interpolate(text) {
                Ok(Cow::Borrowed(_)) => {}
                Ok(Cow::Owned(resolved)) => *text = resolved,
                Err(message) => {
                    errors.push(ConfigError { file: file.to_owned(), line: Some(line), path, message: message.0 })
                }
            },
            Kind::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    todo.push((item, format!("{path}[{i}]")));
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    let key = k.as_str().unwrap_or("?");
                    let child = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
                    todo.push((v, child));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::yaml;

    #[test]
    fn references_resolve_anywhere_and_bad_ones_are_errors_with_their_line() {
        let text = "a:\n  url: \"https://x/${env:PATH}/y\"\n  n: [1, \"${vault:k}\"]\n  k: plain\n";
        let mut root = yaml::parse(text).unwrap();
        let mut errors = Vec::new();
        resolve_all(&mut root, Path::new("c.yaml"), &mut errors);
        let url = root.get("a").unwrap().get("url").unwrap().as_str().unwrap().to_owned();
        assert_eq!(url, format!("https://x/{}/y", std::env::var("PATH").unwrap()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].path.as_str()), (Some(3), "a.n[1]"));
        assert!(errors[0].message.contains("unknown reference"), "{:?}", errors[0]);
    }
}
