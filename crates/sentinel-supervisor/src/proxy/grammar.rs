//! Measuring what a request asks llama-server to compile before its first token: a GBNF
//! `grammar` and every JSON schema (`response_format`, `json_schema`, a tool's `parameters`).
//! llama-server builds its sampler from them on the slot's thread, recursively and without
//! bounds of its own: a grammar nested tens of thousands deep overflows its stack (SIGSEGV),
//! a schema with a very large `enum` or repetition keeps the only slot busy for minutes. Each is
//! measured here against [`Limits`] (`[proxy.grammar]`) and refused with a 400 naming the
//! limit and its key; a `$ref` that leaves the schema or refers back to itself is refused too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// `[proxy.grammar]`: the bounds on one grammar or schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Size in bytes (a grammar as sent, a schema as compact JSON).
    pub max_bytes: usize,
    /// Parentheses nested in a grammar; objects and arrays nested in a schema.
    pub max_depth: usize,
    /// Rules of a grammar (`name ::= ...`); objects (subschemas) in a schema.
    pub max_rules: usize,
    /// Values of one `enum`.
    pub max_enum: usize,
    /// The largest repetition bound: `{m,n}`, `minItems`/`maxItems`, `minLength`/`maxLength`,
    /// `minProperties`/`maxProperties`.
    pub max_repeat: u64,
}

/// Why a grammar or schema is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unbounded {
    #[error("`{field}`: its {what} is {found}, above this server's limit of {limit}; simplify it, or raise `proxy.grammar.{key}` in config.toml")]
    Over {
        field: String,
        what: &'static str,
        key: &'static str,
        found: u64,
        limit: u64,
    },
    #[error("`{field}`: `{part}` repeats, a counted number of times, something that can match nothing; preparing such a grammar takes time exponential in the count (`[a-z]{{0,16}}` repeated {{0,16}} times: 24 s before the first token). Make the repeated part non-empty (`{{1,n}}` inside), or use `*` instead of the count")]
    EmptyRepetition { field: String, part: String },
    #[error("`{field}`: `$ref` \"{reference}\" refers back to itself (a recursive schema); send a schema without reference cycles")]
    Cycle { field: String, reference: String },
    #[error("`{field}`: `$ref` \"{reference}\" does not name a part of this schema (only local references such as \"#/$defs/name\" are followed)")]
    Unresolved { field: String, reference: String },
}

impl Unbounded {
    /// The `code` of the OpenAI error body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Unbounded::Over { .. } | Unbounded::EmptyRepetition { .. } => "grammar_too_complex",
            Unbounded::Cycle { .. } => "schema_ref_cycle",
            Unbounded::Unresolved { .. } => "schema_ref_unresolved",
        }
    }
}

/// One bound of [`Limits`], named by what it measures.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Bytes,
    Depth,
    Rules,
    Subschemas,
    Enum,
    Repeat,
}

impl Limits {
    /// What `bound` measures (for the message), its key in `[proxy.grammar]` and its value.
    fn of(&self, bound: Bound) -> (&'static str, &'static str, u64) {
        match bound {
            Bound::Bytes => ("size in bytes", "max_bytes", self.max_bytes as u64),
            Bound::Depth => ("nesting depth", "max_depth", self.max_depth as u64),
            Bound::Rules => ("number of rules", "max_rules", self.max_rules as u64),
            Bound::Subschemas => ("number of subschemas", "max_rules", self.max_rules as u64),
            Bound::Enum => ("number of `enum` values", "max_enum", self.max_enum as u64),
            Bound::Repeat => ("largest repetition", "max_repeat", self.max_repeat),
        }
    }

    /// `found` of `field` within `bound`, or the error that names the bound and its key.
    fn check(&self, field: &str, bound: Bound, found: u64) -> Result<(), Unbounded> {
        let (what, key, limit) = self.of(bound);
        if found > limit {
            return Err(Unbounded::Over {
                field: field.to_string(),
                what,
                key,
                found,
                limit,
            });
        }
        Ok(())
    }
}

/// What a GBNF grammar measures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrammarSize {
    pub depth: u64,
    pub rules: u64,
    pub repeat: u64,
}

/// Scans a GBNF grammar: parentheses outside literals, character classes and comments,
/// `::=` definitions, and the numbers of `{m,n}` repetitions.
pub(crate) fn measure_grammar(text: &str) -> GrammarSize {
    let b = text.as_bytes();
    let mut size = GrammarSize::default();
    let mut depth = 0u64;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            quote @ (b'"' | b'[') => {
                let close = if quote == b'"' { b'"' } else { b']' };
                i += 1;
                while i < b.len() && b[i] != close {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => {
                depth += 1;
                size.depth = size.depth.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            b':' if b[i..].starts_with(b"::=") => {
                size.rules += 1;
                i += 2;
            }
            b'{' => {
                let end = b[i..].iter().position(|&c| c == b'}').map(|p| i + p);
                if let Some(end) = end {
                    size.repeat = size.repeat.max(largest_number(&text[i + 1..end]));
                    i = end;
                }
            }
            _ => {}
        }
        i += 1;
    }
    size
}

/// The largest run of digits in `s` (saturating), 0 when none.
fn largest_number(s: &str) -> u64 {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0)
}

/// Checks a GBNF grammar sent as `field`.
pub(crate) fn check_grammar(field: &str, text: &str, l: &Limits) -> Result<(), Unbounded> {
    l.check(field, Bound::Bytes, text.len() as u64)?;
    let size = measure_grammar(text);
    l.check(field, Bound::Depth, size.depth)?;
    l.check(field, Bound::Rules, size.rules)?;
    l.check(field, Bound::Repeat, size.repeat)?;
    match super::gbnf::empty_repetition(text) {
        Some(part) => Err(Unbounded::EmptyRepetition {
            field: field.to_string(),
            part,
        }),
        None => Ok(()),
    }
}

/// The schema keywords whose value is a repetition bound.
const REPEAT_KEYS: [&str; 6] = [
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
];

/// Checks a JSON schema sent as `field`: size, depth, objects, `enum` lengths, repetition
/// bounds (also inside `pattern`s), and its `$ref`s (local, acyclic).
pub(crate) fn check_schema(field: &str, schema: &Value, l: &Limits) -> Result<(), Unbounded> {
    let bytes = serde_json::to_vec(schema).map(|v| v.len()).unwrap_or(0);
    l.check(field, Bound::Bytes, bytes as u64)?;
    let mut objects = 0u64;
    walk(field, schema, 1, l, &mut objects)?;
    l.check(field, Bound::Subschemas, objects)?;
    check_refs(field, schema)
}

fn walk(
    field: &str,
    v: &Value,
    depth: u64,
    l: &Limits,
    objects: &mut u64,
) -> Result<(), Unbounded> {
    if v.is_object() || v.is_array() {
        l.check(field, Bound::Depth, depth)?;
    }
    match v {
        Value::Object(m) => {
            *objects += 1;
            if let Some(Value::Array(values)) = m.get("enum") {
                l.check(field, Bound::Enum, values.len() as u64)?;
            }
            for key in REPEAT_KEYS {
                if let Some(n) = m.get(key).and_then(Value::as_f64) {
                    l.check(field, Bound::Repeat, n.max(0.0) as u64)?;
                }
            }
            if let Some(Value::String(p)) = m.get("pattern") {
                let repeat = measure_grammar(&p.replace(['"', '[', ']', '#'], " ")).repeat;
                l.check(field, Bound::Repeat, repeat)?;
            }
            for child in m.values() {
                walk(field, child, depth + 1, l, objects)?;
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(field, child, depth + 1, l, objects)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every `$ref` must point inside the schema (`#` or a JSON pointer from it), and following
/// references from any of them must never come back to one being followed.
fn check_refs(field: &str, root: &Value) -> Result<(), Unbounded> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    /// The `$ref`s reachable inside `v` without following one.
    fn inner<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|c| inner(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| inner(c, out)),
            _ => {}
        }
    }
    /// The references inside the target of `r` (`#`: the root, `#/a/b`: a JSON pointer).
    fn refs_of<'a>(root: &'a Value, field: &str, r: &str) -> Result<Vec<&'a str>, Unbounded> {
        let target = r
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer));
        let t = target.ok_or_else(|| Unbounded::Unresolved {
            field: field.to_string(),
            reference: r.to_string(),
        })?;
        let mut out = Vec::new();
        inner(t, &mut out);
        Ok(out)
    }
    let mut refs = Vec::new();
    inner(root, &mut refs);
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    // Iterative depth-first search over references from the schema's own (`None`):
    // (reference, its references, next index).
    let mut stack: Vec<(Option<&str>, Vec<&str>, usize)> = vec![(None, refs, 0)];
    while let Some((r, next, i)) = stack.last_mut() {
        if *i == next.len() {
            if let Some(r) = *r {
                marks.insert(r, Mark::Done);
            }
            stack.pop();
            continue;
        }
        let n = next[*i];
        *i += 1;
        match marks.get(n) {
            Some(Mark::Open) => {
                return Err(Unbounded::Cycle {
                    field: field.to_string(),
                    reference: n.to_string(),
                })
            }
            Some(Mark::Done) => {}
            None => {
                let children = refs_of(root, field, n)?;
                marks.insert(n, Mark::Open);
                stack.push((Some(n), children, 0));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        crate::config::Config::builtin().unwrap().proxy.grammar
    }

    #[test]
    fn a_grammar_is_measured_outside_literals_and_comments() {
        let g = "root ::= (\"(\" [()] item{2,40})+ # (((\nitem ::= \"a\" | (\"b\" (\"c\"))";
        assert_eq!(
            measure_grammar(g),
            GrammarSize {
                depth: 2,
                rules: 2,
                repeat: 40
            }
        );
    }

    #[test]
    fn deep_large_and_repetitive_grammars_name_their_limit() {
        let l = limits();
        let deep = format!(
            "root ::= {}\"x\"{}",
            "(".repeat(l.max_depth + 1),
            ")".repeat(l.max_depth + 1)
        );
        let e = check_grammar("grammar", &deep, &l).unwrap_err();
        assert!(e.to_string().contains("proxy.grammar.max_depth"), "{e}");
        let e = check_grammar("grammar", "root ::= \"a\"{0,99999}", &l).unwrap_err();
        assert!(e.to_string().contains("proxy.grammar.max_repeat"), "{e}");
        let e = check_grammar("grammar", "root ::= ([a-z]{0,16}){0,16}", &l).unwrap_err();
        assert_eq!(e.code(), "grammar_too_complex");
        assert!(
            e.to_string().contains("`([a-z]{0,16}){0,16}` repeats"),
            "{e}"
        );
        let many: String = (0..=l.max_rules)
            .map(|i| format!("r{i} ::= \"a\"\n"))
            .collect();
        let e = check_grammar("grammar", &many, &l).unwrap_err();
        assert!(e.to_string().contains("max_rules"), "{e}");
        let big = format!("root ::= \"{}\"", "a".repeat(l.max_bytes));
        let e = check_grammar("grammar", &big, &l).unwrap_err();
        assert!(e.to_string().contains("max_bytes"), "{e}");
        assert!(check_grammar("grammar", "root ::= (\"yes\" | \"no\"){1,3}", &l).is_ok());
    }

    #[test]
    fn schemas_are_bounded_in_enum_repeat_depth_and_refs() {
        let l = limits();
        let values: Vec<String> = (0..=l.max_enum).map(|i| format!("v{i}")).collect();
        let e = check_schema("s", &json!({"enum": values}), &l).unwrap_err();
        assert!(e.to_string().contains("max_enum"), "{e}");
        let e = check_schema("s", &json!({"type": "array", "minItems": 100000}), &l).unwrap_err();
        assert!(e.to_string().contains("max_repeat"), "{e}");
        let e = check_schema(
            "s",
            &json!({"type": "string", "pattern": "^a{1,9999}$"}),
            &l,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_repeat"), "{e}");
        let mut deep = json!({"type": "string"});
        for _ in 0..l.max_depth {
            deep = json!({"type": "array", "items": deep});
        }
        let e = check_schema("s", &deep, &l).unwrap_err();
        assert!(e.to_string().contains("max_depth"), "{e}");

        let cyclic = json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"items": {"$ref": "#/$defs/a"}}},
            "$ref": "#/$defs/a"});
        assert_eq!(
            check_schema("s", &cyclic, &l).unwrap_err().code(),
            "schema_ref_cycle"
        );
        let root = json!({"properties": {"next": {"$ref": "#"}}});
        assert_eq!(
            check_schema("s", &root, &l).unwrap_err().code(),
            "schema_ref_cycle"
        );
        let remote = json!({"$ref": "https://example.com/s.json"});
        assert_eq!(
            check_schema("s", &remote, &l).unwrap_err().code(),
            "schema_ref_unresolved"
        );
        // Shared, acyclic references are fine.
        let shared = json!({"$defs": {"id": {"type": "string"}, "pair": {"items": [{"$ref": "#/$defs/id"}, {"$ref": "#/$defs/id"}]}},
            "properties": {"a": {"$ref": "#/$defs/pair"}, "b": {"$ref": "#/$defs/id"}}});
        assert!(check_schema("s", &shared, &l).is_ok());
    }
}
