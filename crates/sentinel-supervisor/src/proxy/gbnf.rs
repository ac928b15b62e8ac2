//! The one shape of a GBNF grammar that no size bound catches: a counted repetition `{m,n}`
//! (n >= 2) of something that can match the empty string, such as `([a-z]{0,16}){0,16}` or
//! `r{0,8}` with `r ::= [a-z]{0,256}`. llama-server expands `{m,n}` into nested optional copies
//! and, building its sampler, follows every way the empty copies can be arranged: time grows
//! exponentially with the count (measured with one thread on the default model, time to the
//! first token: `([a-z]{0,16}){0,8}` 0.23 s, `{0,10}` 0.66 s, `{0,16}` 24 s; `r{0,8}` of
//! `[a-z]{0,256}` over 120 s). `*` of the same operand is a recursive rule and stays fast
//! (0.06 s), as does any repetition of a part that cannot be empty. The grammar is parsed into
//! rules of alternatives of sequences, which rules can be empty is found by a fixpoint, and the
//! first such repetition is named.

use std::collections::HashMap;

/// One element of a sequence, with the repetition applied to it.
#[derive(Debug)]
struct Item {
    atom: Atom,
    /// `(min, max)`; `max = None` is unbounded.
    repeat: (u64, Option<u64>),
    /// The element as written, for the error message.
    text: String,
}

#[derive(Debug)]
enum Atom {
    /// A literal (`true` when it is `""`), a character class or `.`.
    Terminal {
        empty: bool,
    },
    Rule(String),
    Group(Vec<Vec<Item>>),
}

#[derive(Clone)]
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips spaces, newlines and `#` comments.
    fn space(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.text[start..self.pos].to_string())
    }

    /// Whether a rule definition (`name ::=`) starts here.
    fn at_definition(&self) -> bool {
        let mut ahead = self.clone();
        ahead.name().is_some() && ahead.text[ahead.pos..].trim_start().starts_with("::=")
    }

    /// Skips a quoted literal or a character class, escapes included; whether it was `""`.
    fn quoted(&mut self, close: u8) -> bool {
        let start = self.pos;
        self.pos += 1;
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == b'\\' {
                self.pos += 1;
            } else if c == close {
                break;
            }
        }
        self.pos - start == 2 && close == b'"'
    }

    fn alternatives(&mut self, nested: bool) -> Vec<Vec<Item>> {
        let mut alts = vec![self.sequence(nested)];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            alts.push(self.sequence(nested));
        }
        alts
    }

    fn sequence(&mut self, nested: bool) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            self.space();
            if !nested && self.at_definition() {
                return items;
            }
            let start = self.pos;
            let atom = match self.peek() {
                None | Some(b'|' | b')') => return items,
                Some(b'"') => Atom::Terminal {
                    empty: self.quoted(b'"'),
                },
                Some(b'[') => {
                    self.quoted(b']');
                    Atom::Terminal { empty: false }
                }
                Some(b'.') => {
                    self.pos += 1;
                    Atom::Terminal { empty: false }
                }
                Some(b'(') => {
                    self.pos += 1;
                    let group = self.alternatives(true);
                    self.space();
                    if self.peek() == Some(b')') {
                        self.pos += 1;
                    }
                    Atom::Group(group)
                }
                Some(_) => {
                    if let Some(name) = self.name() {
                        Atom::Rule(name)
                    } else {
                        // Not GBNF: llama-server refuses it with its own 400.
                        self.pos += 1;
                        continue;
                    }
                }
            };
            let repeat = self.repetition();
            let text = self.text[start..self.pos].to_string();
            items.push(Item { atom, repeat, text });
        }
    }

    fn repetition(&mut self) -> (u64, Option<u64>) {
        let repeat = match self.peek() {
            Some(b'*') => (0, None),
            Some(b'+') => (1, None),
            Some(b'?') => (0, Some(1)),
            Some(b'{') => {
                let Some(end) = self.text[self.pos..].find('}') else {
                    return (1, Some(1));
                };
                let inner = &self.text[self.pos + 1..self.pos + end];
                self.pos += end + 1;
                let number = |s: &str| s.trim().parse::<u64>().ok();
                return match inner.split_once(',') {
                    Some((min, max)) => (number(min).unwrap_or(0), number(max)),
                    None => (number(inner).unwrap_or(0), number(inner)),
                };
            }
            _ => return (1, Some(1)),
        };
        self.pos += 1;
        repeat
    }
}

fn parse(text: &str) -> HashMap<String, Vec<Vec<Item>>> {
    let mut p = Parser { text, pos: 0 };
    let mut rules = HashMap::new();
    loop {
        p.space();
        let Some(name) = p.name() else { break };
        p.space();
        if !p.text[p.pos..].starts_with("::=") {
            break;
        }
        p.pos += 3;
        let body = p.alternatives(false);
        rules.insert(name, body);
    }
    rules
}

/// Whether one of `alts` can match the empty string: each of its items repeated from 0, or
/// nullable itself.
fn alternatives_nullable(alts: &[Vec<Item>], nullable: &HashMap<&str, bool>) -> bool {
    alts.iter().any(|seq| {
        seq.iter()
            .all(|item| item.repeat.0 == 0 || atom_nullable(&item.atom, nullable))
    })
}

fn atom_nullable(atom: &Atom, nullable: &HashMap<&str, bool>) -> bool {
    match atom {
        Atom::Terminal { empty } => *empty,
        Atom::Rule(name) => nullable.get(name.as_str()).copied().unwrap_or(false),
        Atom::Group(alts) => alternatives_nullable(alts, nullable),
    }
}

fn find_ambiguous<'a>(alts: &'a [Vec<Item>], nullable: &HashMap<&str, bool>) -> Option<&'a str> {
    alts.iter().flatten().find_map(|item| {
        let counted = item.repeat.1.is_some_and(|max| max >= 2);
        if counted && atom_nullable(&item.atom, nullable) {
            return Some(item.text.as_str());
        }
        match &item.atom {
            Atom::Group(inner) => find_ambiguous(inner, nullable),
            _ => None,
        }
    })
}

/// The first counted repetition (`{m,n}`, n >= 2) of a part that can match the empty string,
/// as written; `None` when there is none.
pub(super) fn empty_repetition(text: &str) -> Option<String> {
    let rules = parse(text);
    let mut nullable: HashMap<&str, bool> = rules.keys().map(|k| (k.as_str(), false)).collect();
    // To a fixpoint: a rule is nullable once one of its alternatives is.
    while let Some(name) = rules
        .iter()
        .find(|(name, alts)| !nullable[name.as_str()] && alternatives_nullable(alts, &nullable))
        .map(|(name, _)| name.as_str())
    {
        nullable.insert(name, true);
    }
    let mut names: Vec<&String> = rules.keys().collect();
    names.sort();
    names
        .into_iter()
        .find_map(|name| find_ambiguous(&rules[name], &nullable).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::empty_repetition;

    #[test]
    fn a_counted_repetition_of_what_can_be_empty_is_found() {
        for (grammar, found) in [
            ("root ::= ([a-z]{0,16}){0,16}", "([a-z]{0,16}){0,16}"),
            ("root ::= r{0,8}\nr ::= [a-z]{0,256}", "r{0,8}"),
            ("root ::= (\"\" | \"a\"){2}", "(\"\" | \"a\"){2}"),
            (
                "root ::= x{0,4}\nx ::= y z\ny ::= \"a\"?\nz ::= [b]*",
                "x{0,4}",
            ),
            ("root ::= (\"a\" (s){3,9})\ns ::= \"\"", "(s){3,9}"),
        ] {
            assert_eq!(
                empty_repetition(grammar).as_deref(),
                Some(found),
                "{grammar}"
            );
        }
    }

    #[test]
    fn repetitions_of_what_cannot_be_empty_and_stars_pass() {
        for grammar in [
            "root ::= [a-z]{0,256} [a-z]{0,256}",
            "root ::= ([a-z]{1,16}){0,16}",
            "root ::= ([a-z]{0,16})*",
            "root ::= ([a-z]*)?",
            "root ::= r0{0,16}\nr0 ::= \"a\" | r1\nr1 ::= [a-z]{1,256} r1?",
            "# a comment with {0,9} and ( \"\"\nroot ::= \"{\" [}{]{0,9} \"\\\"\"{2}",
            "root ::= obj\nobj ::= \"{\" ( ws pair )* \"}\"\npair ::= [a-z]+ \":\" ws [0-9]+\nws ::= [ ]?",
        ] {
            assert_eq!(empty_repetition(grammar), None, "{grammar}");
        }
    }
}
