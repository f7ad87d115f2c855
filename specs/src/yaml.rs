//! YAML text to a tree of nodes that remember where they came from, with anchors, aliases and `<<` merges applied.
//!
//! Scalars keep their source text and whether they were plain (unquoted): typing happens later, against the
//! field's expected type, so `image: 1.10` stays `"1.10"` and `mode: 0400` can be read as YAML 1.1 octal.

use std::collections::HashMap;

use granit_parser::Event;
use granit_parser::Parser;
use granit_parser::ScalarStyle;
use granit_parser::Span;

use crate::diag::Pos;

/// Nesting deeper than this is refused (it is never meaningful in a stack file and would exhaust the stack).
pub const MAX_DEPTH: usize = 200;
/// Alias expansion may not create more nodes than this (guards against "billion laughs" documents).
pub const MAX_NODES: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.count()).sum::<usize>(),
            _ => 1,
        }
    }
}

/// A YAML syntax or structure error at a place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

fn pos_of(span: &Span, file: u16) -> Pos {
    Pos {
        file,
        line: span.start.line() as u32,
        col: span.start.col() as u32 + 1,
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        pending_key: Option<Node>,
        merges: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
}

/// Parses the first document of `src`. An empty document is `Value::Null`.
pub fn parse(src: &str, file: u16) -> Result<Node, YamlError> {
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut created = 0usize;
    let mut document_seen = false;

    for next in Parser::new_from_str(src) {
        let (event, span) = next.map_err(|e| {
            let m = e.marker();
            YamlError {
                pos: Pos {
                    file,
                    line: m.line() as u32,
                    col: m.col() as u32 + 1,
                },
                message: format!("invalid YAML: {}", e.info()),
                hint: None,
            }
        })?;
        let pos = pos_of(&span, file);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => None,
            Event::DocumentStart(..) => {
                if document_seen {
                    return Err(YamlError {
                        pos,
                        message: "a stack file holds one YAML document, found a second one".into(),
                        hint: Some("remove the `---` separator or split the documents into separate files".into()),
                    });
                }
                document_seen = true;
                None
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    pos,
                    message: "alias refers to an anchor that is not defined before it".into(),
                    hint: Some("define the anchor (`&name`) before using `*name`".into()),
                })?;
                created += node.count();
                if created > MAX_NODES {
                    return Err(YamlError {
                        pos,
                        message: format!("aliases expand to more than {MAX_NODES} nodes"),
                        hint: Some("this looks like an alias bomb; use fewer nested aliases".into()),
                    });
                }
                Some((Node { value: node.value, pos }, 0))
            }
            Event::Scalar(text, style, anchor, tag) => {
                let plain =
                    style == ScalarStyle::Plain && tag.as_ref().is_none_or(|t| !t.is_yaml_core_schema_tag("str"));
                let value = if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                created += 1;
                Some((Node { value, pos }, anchor))
            }
            Event::SequenceStart(_, anchor, _) => {
                push_frame(
                    &mut stack,
                    Frame::Seq {
                        items: Vec::new(),
                        pos,
                        anchor,
                    },
                    pos,
                )?;
                None
            }
            Event::MappingStart(_, anchor, _) => {
                let frame = Frame::Map {
                    entries: Vec::new(),
                    pending_key: None,
                    merges: Vec::new(),
                    pos,
                    anchor,
                };
                push_frame(&mut stack, frame, pos)?;
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, pos, anchor }) => Some((
                    Node {
                        value: Value::Seq(items),
                        pos,
                    },
                    anchor,
                )),
                _ => return Err(internal(pos)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    entries,
                    merges,
                    pos,
                    anchor,
                    ..
                }) => {
                    let entries = apply_merges(entries, merges)?;
                    created += 1;
                    Some((
                        Node {
                            value: Value::Map(entries),
                            pos,
                        },
                        anchor,
                    ))
                }
                _ => return Err(internal(pos)),
            },
            _ => None,
        };
        let Some((node, anchor)) = finished else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => {
                if root.is_none() {
                    root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                merges,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let (key_text, plain_key) = match key.value {
                        Value::Scalar { text, plain } => (text, plain),
                        Value::Null => (String::new(), true),
                        _ => {
                            return Err(YamlError {
                                pos: key.pos,
                                message: "mapping keys must be plain strings, found a list or mapping".into(),
                                hint: None,
                            })
                        }
                    };
                    if key_text == "<<" && plain_key {
                        merges.push(node);
                    } else {
                        if entries.iter().any(|(k, _)| k.name == key_text) {
                            return Err(YamlError {
                                pos: key.pos,
                                message: format!("duplicate key \"{key_text}\""),
                                hint: Some("a mapping may name each key once; remove or rename one of them".into()),
                            });
                        }
                        entries.push((
                            Key {
                                name: key_text,
                                pos: key.pos,
                            },
                            node,
                        ));
                    }
                }
            },
        }
    }
    Ok(root.unwrap_or(Node {
        value: Value::Null,
        pos: Pos { file, line: 1, col: 1 },
    }))
}

fn push_frame(stack: &mut Vec<Frame>, frame: Frame, pos: Pos) -> Result<(), YamlError> {
    if stack.len() >= MAX_DEPTH {
        return Err(YamlError {
            pos,
            message: format!("nesting is deeper than {MAX_DEPTH} levels"),
            hint: Some("a stack file never needs this depth; check for runaway brackets".into()),
        });
    }
    stack.push(frame);
    Ok(())
}

fn internal(pos: Pos) -> YamlError {
    YamlError {
        pos,
        message: "invalid YAML: unbalanced collection".into(),
        hint: None,
    }
}

/// `<<: *a` or `<<: [*a, *b]`: keys written in the mapping win, then earlier merge sources over later ones.
fn apply_merges(mut entries: Vec<(Key, Node)>, merges: Vec<Node>) -> Result<Vec<(Key, Node)>, YamlError> {
    for merge in merges {
        let sources = match merge.value {
            Value::Map(_) => vec![merge],
            Value::Seq(items) => items,
            _ => {
                return Err(YamlError {
                    pos: merge.pos,
                    message: "`<<` merge key needs a mapping or a list of mappings".into(),
                    hint: Some("write `<<: *anchor` where the anchor names a mapping".into()),
                })
            }
        };
        for source in sources {
            let Value::Map(source_entries) = source.value else {
                return Err(YamlError {
                    pos: source.pos,
                    message: "`<<` merge key needs a mapping or a list of mappings".into(),
                    hint: Some("each merged anchor must name a mapping".into()),
                });
            };
            for (key, value) in source_entries {
                if !entries.iter().any(|(k, _)| k.name == key.name) {
                    entries.push((key, value));
                }
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, bool) {
        match &node.value {
            Value::Scalar { text, plain } => (text.as_str(), *plain),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn scalars_keep_text_and_quoting() {
        let root = parse("a: 1.10\nb: \"1.10\"\nc: 0400\nd:\ne: ~\n", 0).unwrap();
        assert_eq!(scalar(root.get("a").unwrap()), ("1.10", true));
        assert_eq!(scalar(root.get("b").unwrap()), ("1.10", false));
        assert_eq!(scalar(root.get("c").unwrap()), ("0400", true));
        assert_eq!(root.get("d").unwrap().value, Value::Null);
        assert_eq!(root.get("e").unwrap().value, Value::Null);
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse("services:\n  web:\n    image: nginx\n", 0).unwrap();
        let image = root.get("services").unwrap().get("web").unwrap().get("image").unwrap();
        assert_eq!((image.pos.line, image.pos.col), (3, 12));
    }

    #[test]
    fn merge_keys_explicit_wins_and_first_source_wins() {
        let src = "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  x: 3\n";
        let root = parse(src, 0).unwrap();
        let c = root.get("c").unwrap();
        assert_eq!(scalar(c.get("x").unwrap()).0, "3");
        assert_eq!(scalar(c.get("y").unwrap()).0, "1");
        assert_eq!(scalar(c.get("z").unwrap()).0, "2");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n", 0).unwrap_err();
        assert_eq!((err.pos.line, err.pos.col), (2, 1));
        assert!(err.message.contains("duplicate key \"a\""));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&src, 0).unwrap_err().message.contains("aliases expand"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let src = "[".repeat(10_000);
        assert!(parse(&src, 0).is_err());
    }

    #[test]
    fn second_document_is_refused() {
        assert!(parse("a: 1\n---\nb: 2\n", 0).unwrap_err().message.contains("second"));
    }
}
