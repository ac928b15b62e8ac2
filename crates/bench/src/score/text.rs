//! Text normalisation shared by the scorers: case- and punctuation-free word sequences, phrase
//! search with simple negation, and finding the first JSON value in chatty model output.

use serde_json::Value;

/// Lower-case words of `text`: every character that is not a letter or digit separates words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// `text` normalised for equality checks: its words joined by single spaces.
pub fn normalise(text: &str) -> String {
    words(text).join(" ")
}

/// Words that negate the phrase right after them ("not malicious", "no cron job").
const NEGATIONS: [&str; 4] = ["not", "no", "never", "nor"];

/// True when the words before `start` negate what follows ("not", "no", "isn't", "wasn't"),
/// possibly with one article in between ("not a TGT").
fn negated(hay: &[String], start: usize) -> bool {
    let Some(mut prev) = start.checked_sub(1).map(|i| hay[i].as_str()) else {
        return false;
    };
    let mut start = start;
    if ["a", "an", "the"].contains(&prev) && start >= 2 {
        start -= 1;
        prev = hay[start - 1].as_str();
    }
    if NEGATIONS.contains(&prev) {
        return true;
    }
    // "isn't" / "wasn't" / "doesn't" arrive as ["isn", "t"].
    prev == "t" && start >= 2 && hay[start - 2].ends_with('n')
}

/// A phrase found in a word sequence: words `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// Where the non-negated occurrences of `phrase` (already split into words) start in `hay`.
pub fn find_phrase(hay: &[String], phrase: &[String]) -> Vec<Span> {
    if phrase.is_empty() || phrase.len() > hay.len() {
        return Vec::new();
    }
    (0..=hay.len() - phrase.len())
        .filter(|&i| hay[i..i + phrase.len()] == *phrase && !negated(hay, i))
        .map(|i| Span {
            start: i,
            end: i + phrase.len(),
        })
        .collect()
}

/// The first JSON object embedded in `text` (models often wrap it in prose or code fences).
pub fn first_json_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    text.match_indices('{')
        .find_map(|(i, _)| match parse_prefix(&text[i..]) {
            Some(Value::Object(map)) => Some(map),
            _ => None,
        })
}

/// The first JSON object or array embedded in `text`.
pub fn first_json_value(text: &str) -> Option<Value> {
    text.char_indices()
        .filter(|(_, c)| *c == '{' || *c == '[')
        .find_map(|(i, _)| parse_prefix(&text[i..]).filter(|v| v.is_object() || v.is_array()))
}

/// Parses one JSON value at the start of `text`, ignoring whatever follows it.
fn parse_prefix(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// Every string inside a JSON value, depth first.
pub fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_whitespace_and_punctuation() {
        assert_eq!(normalise("  Launch-Agent!!\n"), "launch agent");
        assert_eq!(words("T1059.001"), vec!["t1059", "001"]);
        assert_eq!(normalise(""), "");
    }

    #[test]
    fn finds_phrases_but_not_negated_ones() {
        let hay = words("It is not malicious, it isn't benign: suspicious. Suspicious! Not a TGT");
        assert!(find_phrase(&hay, &words("tgt")).is_empty());
        assert!(find_phrase(&hay, &words("malicious")).is_empty());
        assert!(find_phrase(&hay, &words("benign")).is_empty());
        assert_eq!(find_phrase(&hay, &words("suspicious")).len(), 2);
        assert_eq!(
            find_phrase(&words("a cron job here"), &words("cron job")),
            vec![Span { start: 1, end: 3 }]
        );
    }

    #[test]
    fn finds_json_inside_chatter() {
        let text = "Sure! {bad json} here: ```json\n{\"answer\": \"benign\", \"n\": [1]}\n``` done {\"x\":1}";
        let obj = first_json_object(text).unwrap();
        assert_eq!(obj["answer"], "benign");
        assert!(first_json_object("no json at all").is_none());
        assert_eq!(
            first_json_value("items: [\"a\", \"b\"] end"),
            Some(serde_json::json!(["a", "b"]))
        );
        let mut all = Vec::new();
        strings_in(
            &serde_json::json!({"a": ["x", {"b": "y"}], "n": 3}),
            &mut all,
        );
        all.sort();
        assert_eq!(all, vec!["x", "y"]);
    }
}
