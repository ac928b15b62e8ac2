//! The task set: endpoint-security prompts with the answer each must get, loaded from JSONL.
//!
//! One task per line:
//! `{"id": "...", "category": "...", "system": "...", "prompt": "...", "scorer": {"kind": ...},
//! "schema": {...}, "example_answer": "..."}`, where `system`, `schema` and `example_answer` are
//! optional. The shipped set lives in `tasks.jsonl` next to this file and is compiled into the
//! binary; `--tasks FILE` reads a user's own file in the same format.

use super::score::Scorer;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The shipped endpoint-security task set.
pub const BUILTIN_TASKS: &str = include_str!("tasks.jsonl");

/// One prompt with its deterministic scorer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    pub category: String,
    #[serde(default)]
    pub system: Option<String>,
    pub prompt: String,
    pub scorer: Scorer,
    /// A JSON schema the answer should follow; sent as `response_format` in schema mode.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// The answer shown when this task is a solved few-shot example (`bench --shots`); without
    /// it, the scorer's reference answer.
    #[serde(default)]
    pub example_answer: Option<String>,
}

/// Why a task file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("cannot read task file {path}: {error} (check the path given to --tasks)")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}, line {line}: {problem} (each line must be one JSON task: id, category, prompt, scorer, optional system, schema and example_answer)")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("{path}, line {line}: task id `{id}` is already used on line {first} (give every task a unique id)")]
    DuplicateId {
        path: PathBuf,
        line: usize,
        first: usize,
        id: String,
    },
    #[error("{path} holds no tasks (add at least one JSON line)")]
    Empty { path: PathBuf },
}

/// Loads the shipped set, or the user's file when one is given.
pub fn load(file: Option<&Path>) -> Result<Vec<Task>, TaskError> {
    match file {
        None => parse(BUILTIN_TASKS, Path::new("<built-in tasks.jsonl>")),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| TaskError::Read {
                path: path.to_path_buf(),
                error,
            })?;
            parse(&text, path)
        }
    }
}

/// Parses JSONL task text; `origin` names the file in errors. Blank lines are skipped.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<Task>, TaskError> {
    let mut tasks: Vec<Task> = Vec::new();
    let mut first_line = std::collections::HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |problem: String| TaskError::Line {
            path: origin.to_path_buf(),
            line,
            problem,
        };
        let mut de = serde_json::Deserializer::from_str(raw);
        let task: Task = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                err(inner.to_string())
            } else {
                err(format!("field `{path}`: {inner}"))
            }
        })?;
        if task.id.trim().is_empty() {
            return Err(err("field `id` is empty".into()));
        }
        if task.prompt.trim().is_empty() {
            return Err(err("field `prompt` is empty".into()));
        }
        task.scorer
            .validate()
            .map_err(|p| err(format!("field `scorer`: {p}")))?;
        if let Some(schema) = &task.schema {
            if !schema.is_object() {
                return Err(err("field `schema` must be a JSON object".into()));
            }
        }
        if let Some(first) = first_line.insert(task.id.clone(), line) {
            return Err(TaskError::DuplicateId {
                path: origin.to_path_buf(),
                line,
                first,
                id: task.id,
            });
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(TaskError::Empty {
            path: origin.to_path_buf(),
        });
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn builtin_set_is_large_and_varied() {
        let tasks = load(None).expect("built-in tasks parse");
        assert!(tasks.len() >= 60, "only {} tasks", tasks.len());
        let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &tasks {
            *per_category.entry(t.category.as_str()).or_default() += 1;
            assert!(t.schema.is_some(), "{} has no schema", t.id);
        }
        assert!(per_category.len() >= 6, "{per_category:?}");
        assert!(per_category.values().all(|n| *n >= 8), "{per_category:?}");
    }

    #[test]
    fn builtin_expected_answers_score_full_marks() {
        // Every task's own reference answer must be accepted by its scorer.
        for t in load(None).unwrap() {
            let reference = t.scorer.reference_answer();
            assert_eq!(t.scorer.score(&reference), 1.0, "{}: {reference:?}", t.id);
        }
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("my-tasks.jsonl"))
            .expect_err("should fail")
            .to_string()
    }

    const GOOD: &str = r#"{"id":"a","category":"c","prompt":"p","scorer":{"kind":"label","answer":"x","labels":["x","y"]}}"#;

    #[test]
    fn malformed_lines_name_file_line_and_field() {
        let missing =
            r#"{"id":"b","category":"c","scorer":{"kind":"label","answer":"x","labels":["x"]}}"#;
        let msg = parse_err(&format!("{GOOD}\n\n{missing}\n"));
        assert!(msg.starts_with("my-tasks.jsonl, line 3:"), "{msg}");
        assert!(msg.contains("missing field `prompt`"), "{msg}");

        let bad_kind = r#"{"id":"b","category":"c","prompt":"p","scorer":{"kind":"vibes"}}"#;
        let msg = parse_err(&format!("{GOOD}\n{bad_kind}"));
        assert!(
            msg.contains("line 2") && msg.contains("field `scorer.kind`"),
            "{msg}"
        );
        assert!(msg.contains("vibes"), "{msg}");

        let not_json = "{\"id\": ";
        assert!(parse_err(not_json).contains("line 1"));

        let unknown = r#"{"id":"b","category":"c","prompt":"p","answer":"x","scorer":{"kind":"label","answer":"x","labels":["x"]}}"#;
        assert!(parse_err(unknown).contains("unknown field `answer`"));

        let label_not_in_set = r#"{"id":"b","category":"c","prompt":"p","scorer":{"kind":"label","answer":"z","labels":["x","y"]}}"#;
        let msg = parse_err(label_not_in_set);
        assert!(msg.contains("line 1") && msg.contains("`z`"), "{msg}");

        let dup = parse_err(&format!("{GOOD}\n{GOOD}"));
        assert!(
            dup.contains("line 2") && dup.contains("line 1") && dup.contains("`a`"),
            "{dup}"
        );

        assert!(parse_err("\n  \n").contains("no tasks"));
    }

    #[test]
    fn reads_a_user_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap();
        let tasks = load(Some(&path)).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "a");
        let missing = load(Some(&dir.path().join("nope.jsonl"))).unwrap_err();
        assert!(missing.to_string().contains("nope.jsonl"));
    }
}
