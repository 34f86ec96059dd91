//! A YAML tree that remembers where each node was written, and a serde `Deserializer` over it
//! whose errors carry the node's path (`flows[0].source.options.count`) and line.
//!
//! serde stops at the first error of one `deserialize` call, so the loader deserializes each
//! connection and each flow on its own and collects their errors: one bad flow does not hide
//! the problems of the next. The tree is here; the deserializer in [`de`].

mod de;

pub use de::{Error, from_node};

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub kind: Kind,
    /// 1-based line of the node's first character.
    pub line: usize,
}

/// A YAML node's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar as written; `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        /// The text.
        text: String,
        /// Whether it was unquoted (and so may be a number, a boolean or null).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in written order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Whether this is YAML's null (`~`, `null` or nothing).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// An empty mapping at `line`, standing in for an omitted `options:`.
    pub fn empty_map(line: usize) -> Node {
        Node { kind: Kind::Map(Vec::new()), line }
    }

    /// This mapping without the entry `key`.
    pub fn without(&self, key: &str) -> Node {
        match &self.kind {
            Kind::Map(entries) => Node {
                kind: Kind::Map(entries.iter().filter(|(k, _)| k.as_str() != Some(key)).cloned().collect()),
                line: self.line,
            },
            _ => self.clone(),
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// The parser's message.
    pub message: String,
}

/// The deepest a config may nest mappings and sequences. Real configs stay under ten levels;
/// the limit is there because a hostile file nested thousands deep would otherwise exhaust the
/// stack of whatever walks the tree next.
pub const MAX_DEPTH: usize = 64;

/// The most nodes a config may hold once its aliases are expanded. An alias copies the node it
/// names, so nine levels of aliases to ten aliases each ("billion laughs") would grow a small
/// file into 10⁹ nodes; the count stops that long before memory does.
pub const MAX_NODES: usize = 100_000;

/// Parses one YAML document into a [`Node`]. An empty document is an empty mapping.
/// A hash of what `node` holds (after references were resolved, so a rotated secret changes
/// it), for telling on a reload whether a flow or a connection changed. The same within a
/// process for the same content, which is all a reload compares.
pub fn fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let value = from_node::<serde_json::Value>(node, "").unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut h);
    h.finish()
}

pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Events are pulled one by one: the parser's own `load` recurses into every nested node and
    // overflows the stack on a deeply nested file before the builder could refuse it.
    loop {
        let (ev, mark) =
            parser.next_token().map_err(|e| SyntaxError { line: e.marker().line(), message: e.info().to_owned() })?;
        let end = matches!(ev, Event::StreamEnd | Event::DocumentEnd);
        b.on_event(ev, mark);
        if end || b.error.is_some() {
            break;
        }
    }
    if let Some(message) = b.error {
        return Err(SyntaxError { line: b.error_line, message });
    }
    Ok(b.root.unwrap_or(Node::empty_map(1)))
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, usize, Option<Node>)>,
    /// Anchored nodes by id, with how many nodes each holds (what an alias to it adds) and
    /// how deep it nests (what an alias adds to the depth where it is used).
    anchors: HashMap<usize, (Node, usize, usize)>,
    /// Nodes in the document so far, aliases expanded.
    nodes: usize,
    root: Option<Node>,
    /// The first error; once set, the rest of the document is ignored.
    error: Option<String>,
    error_line: usize,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((Node { kind: Kind::Seq(items), .. }, _, _)) => items.push(node),
            Some((Node { kind: Kind::Map(entries), .. }, _, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
            Some(_) => {}
        }
    }

    fn fail(&mut self, line: usize, message: String) {
        self.error_line = line;
        self.error = Some(message);
        // Nothing built so far is needed any more; free it now.
        self.stack.clear();
        self.anchors.clear();
    }

    /// Counts `n` more nodes; false (and the error set) past [`MAX_NODES`].
    fn count(&mut self, n: usize, line: usize) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                line,
                format!(
                    "the document holds more than {MAX_NODES} values once its aliases are expanded (an alias bomb?)"
                ),
            );
            return false;
        }
        true
    }
}

/// How many nodes `node` holds (itself included) and how deep it nests, walked without
/// recursion.
fn measure(node: &Node) -> (usize, usize) {
    let mut todo = vec![(node, 1usize)];
    let (mut size, mut height) = (0, 0);
    while let Some((x, depth)) = todo.pop() {
        size += 1;
        height = height.max(depth);
        match &x.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => todo.extend(items.iter().map(|i| (i, depth + 1))),
            Kind::Map(entries) => todo.extend(entries.iter().flat_map(|(k, v)| [(k, depth + 1), (v, depth + 1)])),
        }
    }
    (size, height)
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                if !self.count(1, line) {
                    return;
                }
                let node = Node { kind: Kind::Scalar { text, plain: style == TScalarStyle::Plain }, line };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 1, 1));
                }
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(line, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                if !self.count(1, line) {
                    return;
                }
                let kind =
                    if matches!(ev, Event::SequenceStart(..)) { Kind::Seq(Vec::new()) } else { Kind::Map(Vec::new()) };
                self.stack.push((Node { kind, line }, anchor, None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor, _)) = self.stack.pop() {
                    if anchor > 0 {
                        let (size, height) = measure(&node);
                        self.anchors.insert(anchor, (node.clone(), size, height));
                    }
                    self.push_value(node);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).map(|(_, size, height)| (*size, *height)) {
                // A copy of the anchored node lands here: it adds its size to the document and
                // its depth to where it is used.
                Some((size, height)) => {
                    if self.stack.len() + height > MAX_DEPTH {
                        return self.fail(line, format!("nested deeper than {MAX_DEPTH} levels (through an alias)"));
                    }
                    if self.count(size, line)
                        && let Some((node, _, _)) = self.anchors.get(&id).cloned()
                    {
                        self.push_value(node);
                    }
                }
                None => self.fail(line, "unknown alias".into()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u64,
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        items: Vec<Inner>,
    }

    #[test]
    fn reads_values_and_lines() {
        let n = parse("inner:\n  count: 3\n  name: 'x'\nitems:\n  - count: 1\n").unwrap();
        let o: Outer = from_node(&n, "").unwrap();
        assert_eq!(o.inner, Inner { count: 3, name: Some("x".into()) });
        assert_eq!(n.get("items").unwrap().line, 5);
    }

    #[test]
    fn errors_name_path_and_line() {
        let n = parse("inner:\n  count: 3\n  nme: x\nitems: []\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!((e.path.as_deref(), e.line), (Some("inner.nme"), Some(3)), "{e:?}");
        assert!(e.message.contains("unknown field `nme`"), "{e:?}");

        let n = parse("inner:\n  count: lots\nitems: []\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!((e.path.as_deref(), e.line), (Some("inner.count"), Some(2)), "{e:?}");

        let n = parse("inner: {count: 1}\nitems:\n  - count: 1\n  - name: y\n").unwrap();
        let e = from_node::<Outer>(&n, "").unwrap_err();
        assert_eq!((e.path.as_deref(), e.line), (Some("items[1]"), Some(4)), "{e:?}");
        assert!(e.message.contains("missing field `count`"), "{e:?}");
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused_without_blowing_up() {
        // 3,000 levels in block style (one space each), and 10,000 in flow style.
        let block: String = (0..3_000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        let e = parse(&block).unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e:?}");
        let flow = format!("a: {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&flow).is_err());
        // Billion laughs: nine levels of ten aliases each.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(e.message.contains("aliases are expanded"), "{e:?}");
        // Aliases that stay small are fine, and copy what they name.
        let n = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(n.get("other").unwrap().get("x").unwrap().as_str(), Some("1"));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }
}
