//! Deterministic scorers: each turns a model's answer into a score in 0.0..=1.0.
//!
//! Common rules: comparisons ignore case, whitespace and punctuation; chatter around the answer
//! is allowed as long as the answer is unambiguous; an empty answer scores 0; an answer that
//! hedges by naming several candidates scores 0. A phrase right after "not", "no", "never",
//! "nor" or "...n't" does not count as named ("not malicious").
//!
//! - `label`: one label out of a closed set (plus aliases). When the answer holds a JSON object
//!   whose `field` (default `answer`) is a string, only that string is read. Exactly one distinct
//!   label must be named: the expected one scores 1, anything else 0. A label named inside a
//!   longer one ("wmi" inside "wmi subscription") counts as the longer one.
//! - `accepted`: 1 when any accepted phrase occurs and no `reject` phrase (the meaning of a
//!   different answer) does, else 0.
//! - `technique`: MITRE ATT&CK IDs (`T1234`, `T1234.001`) found anywhere in the answer. The
//!   expected ID, possibly with its bare parent, scores 1; only the parent or a sibling
//!   sub-technique scores 0.5; IDs of more than one technique, or none, score 0.
//! - `set_f1`: F1 between the indicators extracted from the answer (see [`ioc`]) and the expected
//!   ones; when the answer holds JSON, the strings inside it are read.
//! - `json_fields`: the first JSON object of the answer; each field rule scores 1 or 0 and the
//!   score is their mean, except that descriptive fields (`one_line`) earn credit only when at
//!   least one value field (`equals`, `one_of`) is right. No JSON object scores 0.

pub mod ioc;
pub mod text;

#[cfg(test)]
mod tests;

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use text::{find_phrase, normalise, words, Span};

/// How a task's answer is scored, with its parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scorer {
    Label {
        answer: String,
        labels: Vec<String>,
        #[serde(default)]
        aliases: BTreeMap<String, Vec<String>>,
        #[serde(default = "default_field")]
        field: String,
    },
    Accepted {
        answers: Vec<String>,
        #[serde(default)]
        reject: Vec<String>,
    },
    Technique {
        answer: String,
    },
    SetF1 {
        items: Vec<String>,
    },
    JsonFields {
        fields: BTreeMap<String, FieldRule>,
    },
}

fn default_field() -> String {
    "answer".to_string()
}

/// What one field of a JSON answer must hold.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldRule {
    /// The value (strings compared normalised).
    Equals(Value),
    /// Any one of these values.
    OneOf(Vec<Value>),
    /// A non-empty string; with `true`, also without line breaks.
    OneLine(bool),
}

impl Scorer {
    /// The score of `answer`, in 0.0..=1.0.
    pub fn score(&self, answer: &str) -> f64 {
        if answer.trim().is_empty() {
            return 0.0;
        }
        match self {
            Scorer::Label {
                answer: expected,
                labels,
                aliases,
                field,
            } => score_label(answer, expected, labels, aliases, field),
            Scorer::Accepted { answers, reject } => score_accepted(answer, answers, reject),
            Scorer::Technique { answer: expected } => score_technique(answer, expected),
            Scorer::SetF1 { items } => score_set_f1(answer, items),
            Scorer::JsonFields { fields } => score_json_fields(answer, fields),
        }
    }

    /// The kind's name as written in task files.
    pub fn kind(&self) -> &'static str {
        match self {
            Scorer::Label { .. } => "label",
            Scorer::Accepted { .. } => "accepted",
            Scorer::Technique { .. } => "technique",
            Scorer::SetF1 { .. } => "set_f1",
            Scorer::JsonFields { .. } => "json_fields",
        }
    }

    /// An answer that must score 1 (used to check task files and in tests).
    pub fn reference_answer(&self) -> String {
        match self {
            Scorer::Label { answer, .. } | Scorer::Technique { answer } => answer.clone(),
            Scorer::Accepted { answers, .. } => answers.first().cloned().unwrap_or_default(),
            Scorer::SetF1 { items } => items.join("\n"),
            Scorer::JsonFields { fields } => {
                let obj: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(name, rule)| {
                        let v = match rule {
                            FieldRule::Equals(v) => v.clone(),
                            FieldRule::OneOf(vs) => vs.first().cloned().unwrap_or(Value::Null),
                            FieldRule::OneLine(_) => Value::from("reference reason"),
                        };
                        (name.clone(), v)
                    })
                    .collect();
                Value::Object(obj).to_string()
            }
        }
    }

    /// Checks the parameters; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Scorer::Label {
                answer,
                labels,
                aliases,
                ..
            } => {
                let norm: Vec<String> = labels.iter().map(|l| normalise(l)).collect();
                if norm.iter().any(String::is_empty) {
                    return Err("`labels` holds an empty label".into());
                }
                if !norm.contains(&normalise(answer)) {
                    return Err(format!("`answer` `{answer}` is not one of `labels`"));
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(dup) = norm.iter().find(|l| !seen.insert(l.as_str())) {
                    return Err(format!("label `{dup}` is listed twice"));
                }
                if let Some(key) = aliases.keys().find(|k| !norm.contains(&normalise(k))) {
                    return Err(format!("`aliases` key `{key}` is not one of `labels`"));
                }
                Ok(())
            }
            Scorer::Accepted { answers, reject } => {
                if answers.is_empty() || answers.iter().any(|a| normalise(a).is_empty()) {
                    return Err("`answers` must hold at least one non-empty answer".into());
                }
                for a in answers {
                    let hay = words(a);
                    if let Some(r) = reject
                        .iter()
                        .find(|r| !find_phrase(&hay, &words(r)).is_empty())
                    {
                        return Err(format!(
                            "accepted answer `{a}` contains rejected phrase `{r}`"
                        ));
                    }
                }
                Ok(())
            }
            Scorer::Technique { answer } => match technique_ids(answer).as_slice() {
                [one] if one == &answer.to_ascii_uppercase() => Ok(()),
                _ => Err(format!(
                    "`answer` `{answer}` is not an ATT&CK ID like T1059 or T1059.001"
                )),
            },
            Scorer::SetF1 { items } => {
                if items.is_empty() {
                    return Err("`items` must hold at least one indicator".into());
                }
                for item in items {
                    if ioc::classify(item).len() != 1 {
                        return Err(format!(
                            "item `{item}` is not an IP, domain, hash or path the extractor recognises"
                        ));
                    }
                }
                Ok(())
            }
            Scorer::JsonFields { fields } => {
                if fields.is_empty() {
                    return Err("`fields` must hold at least one field rule".into());
                }
                match fields
                    .iter()
                    .find(|(_, r)| matches!(r, FieldRule::OneOf(v) if v.is_empty()))
                {
                    Some((name, _)) => Err(format!("field `{name}`: `one_of` is empty")),
                    None => Ok(()),
                }
            }
        }
    }
}

fn score_label(
    answer: &str,
    expected: &str,
    labels: &[String],
    aliases: &BTreeMap<String, Vec<String>>,
    field: &str,
) -> f64 {
    let from_json = text::first_json_object(answer)
        .and_then(|obj| obj.get(field).and_then(Value::as_str).map(str::to_string));
    let hay = words(from_json.as_deref().unwrap_or(answer));
    // Every (span, label) where a label or one of its aliases is named.
    let mut found: Vec<(Span, String)> = Vec::new();
    for label in labels {
        let canonical = normalise(label);
        let phrases = std::iter::once(label).chain(
            aliases
                .iter()
                .filter(|(k, _)| normalise(k) == canonical)
                .flat_map(|(_, v)| v.iter()),
        );
        for phrase in phrases {
            for span in find_phrase(&hay, &words(phrase)) {
                found.push((span, canonical.clone()));
            }
        }
    }
    let inside_longer = |s: &Span| {
        found.iter().any(|(o, _)| {
            o.start <= s.start && s.end <= o.end && (o.end - o.start) > (s.end - s.start)
        })
    };
    let named: std::collections::BTreeSet<&String> = found
        .iter()
        .filter(|(s, _)| !inside_longer(s))
        .map(|(_, l)| l)
        .collect();
    match named.into_iter().collect::<Vec<_>>().as_slice() {
        [only] if **only == normalise(expected) => 1.0,
        _ => 0.0,
    }
}

fn score_accepted(answer: &str, accepted: &[String], reject: &[String]) -> f64 {
    let hay = words(answer);
    let named = |p: &String| !find_phrase(&hay, &words(p)).is_empty();
    if accepted.iter().any(named) && !reject.iter().any(named) {
        1.0
    } else {
        0.0
    }
}

/// ATT&CK technique IDs in `text`, upper-cased, in order of appearance, without repeats.
pub fn technique_ids(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.to_ascii_uppercase().chars().collect();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = i == 0 || !chars[i - 1].is_alphanumeric();
        if chars[i] == 'T' && boundary_before && (1..=4).all(|k| digit(i + k)) {
            let mut end = i + 5;
            if chars.get(end) == Some(&'.') && (1..=3).all(|k| digit(end + k)) {
                end += 4;
            }
            if !chars.get(end).is_some_and(|c| c.is_alphanumeric()) {
                let id: String = chars[i..end].iter().collect();
                if !out.contains(&id) {
                    out.push(id);
                }
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

fn score_technique(answer: &str, expected: &str) -> f64 {
    let expected = expected.to_ascii_uppercase();
    let parent = |id: &str| id.split('.').next().unwrap_or_default().to_string();
    let ids = technique_ids(answer);
    let parents: std::collections::BTreeSet<String> = ids.iter().map(|id| parent(id)).collect();
    if parents.len() != 1 || !parents.contains(&parent(&expected)) {
        return 0.0;
    }
    let others_are_parent = ids.iter().all(|id| *id == expected || !id.contains('.'));
    if ids.contains(&expected) && others_are_parent {
        1.0
    } else {
        0.5
    }
}

fn score_set_f1(answer: &str, items: &[String]) -> f64 {
    let predicted = match text::first_json_value(answer) {
        Some(json) => {
            let mut strings = Vec::new();
            text::strings_in(&json, &mut strings);
            ioc::extract(&strings.join("\n"))
        }
        None => ioc::extract(answer),
    };
    let expected: std::collections::BTreeSet<String> =
        items.iter().flat_map(|i| ioc::classify(i)).collect();
    let hits = predicted.intersection(&expected).count() as f64;
    if hits == 0.0 {
        return 0.0;
    }
    let precision = hits / predicted.len() as f64;
    let recall = hits / expected.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

fn values_match(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => normalise(a) == normalise(e),
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        _ => actual == expected,
    }
}

fn score_json_fields(answer: &str, fields: &BTreeMap<String, FieldRule>) -> f64 {
    let Some(obj) = text::first_json_object(answer) else {
        return 0.0;
    };
    let (mut values_right, mut text_right) = (0usize, 0usize);
    for (name, rule) in fields {
        let actual = obj.get(name);
        match rule {
            FieldRule::Equals(e) => {
                values_right += usize::from(actual.is_some_and(|a| values_match(a, e)))
            }
            FieldRule::OneOf(es) => {
                values_right +=
                    usize::from(actual.is_some_and(|a| es.iter().any(|e| values_match(a, e))))
            }
            FieldRule::OneLine(single) => {
                let ok = actual
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty() && (!single || !s.trim().contains('\n')));
                text_right += usize::from(ok);
            }
        }
    }
    let has_value_rules = fields.values().any(|r| !matches!(r, FieldRule::OneLine(_)));
    let credited = if values_right > 0 || !has_value_rules {
        values_right + text_right
    } else {
        0
    };
    credited as f64 / fields.len() as f64
}
