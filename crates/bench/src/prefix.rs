//! Shared-prefix workloads (`bench --shots K`, `--prefix FILE`): every task of a category is sent
//! behind the same instruction prefix (a system message with the policy and output format, then
//! K solved examples as user/assistant turns), byte-identical across that category's tasks so
//! llama-server's prompt cache reuses it and only the task itself is prefilled.
//!
//! The solved examples are never scored: taken from the task set, they are the first K tasks of
//! each category in file order, held out of every run (zero-shot ones too, so both score the
//! same tasks); taken from `--examples FILE` (the task format), none of their ids may be a
//! scored task's.

use super::score::Scorer;
use super::task::{self, Task, TaskError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// The policy of the built-in prefix when a category's tasks carry no `system` text.
pub const DEFAULT_POLICY: &str =
    "You are an endpoint-security analyst. Answer briefly and precisely.";

/// What the command line asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixOptions {
    /// Solved examples per category (0: none).
    pub shots: usize,
    /// The user's own system text, replacing the built-in policy and output format.
    pub prefix_file: Option<PathBuf>,
    /// Solved examples from this task file instead of held-out tasks.
    pub examples_file: Option<PathBuf>,
}

impl PrefixOptions {
    /// Whether any task gets a shared prefix beyond its own system text.
    pub fn wanted(&self) -> bool {
        self.shots > 0 || self.prefix_file.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    #[error("cannot read the prefix file {path}: {error} (check the path given to --prefix)")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the prefix file {path} is empty (write the system text every task is sent behind)")]
    EmptyPrefix { path: PathBuf },
    #[error("examples: {0}")]
    Examples(#[from] TaskError),
    #[error("category `{category}` has {have} task(s): --shots {shots} holds {shots} out as examples and needs at least one left to score (lower --shots, or give --examples FILE)")]
    TooFewTasks {
        category: String,
        have: usize,
        shots: usize,
    },
    #[error("the examples file has {have} example(s) of category `{category}`; --shots {shots} needs {shots} (add examples or lower --shots)")]
    TooFewExamples {
        category: String,
        have: usize,
        shots: usize,
    },
    #[error("example `{id}` is also a scored task (a solved example must not be scored; rename or drop it)")]
    ExampleIsScored { id: String },
}

/// The prefix of every category for one bench session.
#[derive(Debug, Clone, PartialEq)]
pub struct Framing {
    /// Solved examples per category.
    pub shots: usize,
    /// `built-in`, or the path given with --prefix.
    pub source: String,
    /// Per category: the messages every one of its tasks is sent behind.
    prefixes: BTreeMap<String, Vec<Value>>,
}

/// The tasks to score and how they are framed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scored: Vec<Task>,
    /// Ids of the tasks held out as examples (empty with --examples or without shots).
    pub held_out: Vec<String>,
    /// Where the examples come from: `held-out tasks` or the examples file.
    pub examples_source: Option<String>,
    /// `None`: every task is sent as written (its own system text and prompt).
    pub framing: Option<Framing>,
}

/// Splits `tasks` into examples and scored tasks and builds each category's prefix.
pub fn plan(tasks: Vec<Task>, options: &PrefixOptions) -> Result<Plan, PrefixError> {
    if !options.wanted() {
        return Ok(Plan {
            scored: tasks,
            held_out: Vec::new(),
            examples_source: None,
            framing: None,
        });
    }
    let k = options.shots;
    let custom = match &options.prefix_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| PrefixError::Read {
                path: path.clone(),
                error,
            })?;
            if text.trim().is_empty() {
                return Err(PrefixError::EmptyPrefix { path: path.clone() });
            }
            Some(text)
        }
    };
    let (scored, held_out, pool, examples_source) = match (&options.examples_file, k) {
        (_, 0) => (tasks, Vec::new(), Vec::new(), None),
        (Some(path), _) => {
            let examples = task::load(Some(path))?;
            let ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
            if let Some(e) = examples.iter().find(|e| ids.contains(e.id.as_str())) {
                return Err(PrefixError::ExampleIsScored { id: e.id.clone() });
            }
            (
                tasks,
                Vec::new(),
                examples,
                Some(path.display().to_string()),
            )
        }
        (None, _) => {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let (mut scored, mut pool) = (Vec::new(), Vec::new());
            for t in tasks {
                let n = seen.entry(t.category.clone()).or_default();
                *n += 1;
                if *n <= k {
                    pool.push(t);
                } else {
                    scored.push(t);
                }
            }
            if let Some((category, &have)) = seen.iter().find(|(_, &n)| n <= k) {
                return Err(PrefixError::TooFewTasks {
                    category: category.clone(),
                    have,
                    shots: k,
                });
            }
            let held = pool.iter().map(|t| t.id.clone()).collect();
            (scored, held, pool, Some("held-out tasks".to_string()))
        }
    };
    let mut prefixes = BTreeMap::new();
    for t in &scored {
        if prefixes.contains_key(&t.category) {
            continue;
        }
        let of_category: Vec<&Task> = scored.iter().filter(|s| s.category == t.category).collect();
        let examples: Vec<&Task> = pool
            .iter()
            .filter(|e| e.category == t.category)
            .take(k)
            .collect();
        if examples.len() < k {
            return Err(PrefixError::TooFewExamples {
                category: t.category.clone(),
                have: examples.len(),
                shots: k,
            });
        }
        let system = match &custom {
            Some(text) => text.clone(),
            None => builtin_system(&of_category, k),
        };
        let mut messages = vec![json!({"role": "system", "content": system})];
        for e in examples {
            messages.push(json!({"role": "user", "content": e.prompt}));
            messages.push(json!({"role": "assistant", "content": example_answer(e)}));
        }
        prefixes.insert(t.category.clone(), messages);
    }
    Ok(Plan {
        scored,
        held_out,
        examples_source,
        framing: Some(Framing {
            shots: k,
            source: options
                .prefix_file
                .as_ref()
                .map_or("built-in".to_string(), |p| p.display().to_string()),
            prefixes,
        }),
    })
}

/// The answer a solved example shows.
fn example_answer(t: &Task) -> String {
    t.example_answer
        .clone()
        .unwrap_or_else(|| t.scorer.reference_answer())
}

/// Policy (the category's most common `system` text), output format (by the first task's
/// scorer) and, with examples, a line saying what they are.
fn builtin_system(of_category: &[&Task], shots: usize) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in of_category {
        if let Some(s) = &t.system {
            *counts.entry(s.as_str()).or_default() += 1;
        }
    }
    // Most common, ties broken by text order: the same input always gives the same prefix.
    let policy = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or(DEFAULT_POLICY, |(s, _)| s);
    let format = match of_category.first().map(|t| &t.scorer) {
        Some(Scorer::Label { .. }) => {
            "Output format: exactly one of the labels the task lists, and nothing else."
        }
        Some(Scorer::Technique { .. }) => {
            "Output format: one MITRE ATT&CK technique ID (the most specific sub-technique, e.g. \
             T1059.001), and nothing else."
        }
        Some(Scorer::SetF1 { .. }) => {
            "Output format: each requested item on its own line, exactly as it appears in the \
             input, and nothing else."
        }
        Some(Scorer::Accepted { .. }) => "Output format: a few words, no explanation.",
        Some(Scorer::JsonFields { .. }) | None => {
            "Output format: one JSON object with the fields the task asks for, and nothing else."
        }
    };
    let mut text = format!("{policy}\n\n{format}");
    if shots > 0 {
        text.push_str(&format!(
            "\n\nThe first {shots} tasks below are solved examples; answer the last one the same way."
        ));
    }
    text
}

impl Framing {
    /// The prefix `task` is sent behind; `None` for a category the plan did not see.
    pub fn prefix_of(&self, category: &str) -> Option<&[Value]> {
        self.prefixes.get(category).map(Vec::as_slice)
    }

    /// The categories, in order.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.prefixes.keys().map(String::as_str)
    }
}

/// The chat messages of `task`: behind its category's prefix, or as written (its own system text
/// and prompt) when there is no framing.
pub fn messages(task: &Task, framing: Option<&Framing>) -> Vec<Value> {
    let mut messages = match framing.and_then(|f| f.prefix_of(&task.category)) {
        Some(prefix) => prefix.to_vec(),
        None => task
            .system
            .iter()
            .map(|s| json!({"role": "system", "content": s}))
            .collect(),
    };
    messages.push(json!({"role": "user", "content": task.prompt}));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Vec<Task> {
        task::load(None).unwrap()
    }

    fn opts(shots: usize) -> PrefixOptions {
        PrefixOptions {
            shots,
            ..PrefixOptions::default()
        }
    }

    /// The prefix of `task` as sent: every message but the last, serialised.
    fn sent_prefix(task: &Task, framing: &Framing) -> String {
        let m = messages(task, Some(framing));
        serde_json::to_string(&m[..m.len() - 1]).unwrap()
    }

    #[test]
    fn a_category_shares_one_byte_identical_prefix_and_categories_differ() {
        let plan = plan(builtin(), &opts(2)).unwrap();
        let framing = plan.framing.as_ref().unwrap();
        let mut per_category: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
        for t in &plan.scored {
            per_category
                .entry(t.category.as_str())
                .or_default()
                .insert(sent_prefix(t, framing));
            let m = messages(t, Some(framing));
            // system + 2 solved examples (user, assistant) + the task.
            assert_eq!(m.len(), 6, "{}", t.id);
            assert_eq!(m[5]["content"], t.prompt.as_str());
            assert_eq!(m[1]["role"], "user");
            assert_eq!(m[2]["role"], "assistant");
        }
        assert!(per_category.len() >= 6);
        for (category, prefixes) in &per_category {
            assert_eq!(prefixes.len(), 1, "{category} has several prefixes");
        }
        let distinct: HashSet<&String> = per_category.values().flatten().collect();
        assert_eq!(
            distinct.len(),
            per_category.len(),
            "two categories share a prefix"
        );
        // Built twice, it is the same (no map-order or clock dependence).
        let again = super::plan(builtin(), &opts(2)).unwrap();
        assert_eq!(again.framing.unwrap(), *framing);
    }

    #[test]
    fn examples_are_held_out_of_the_scored_tasks() {
        let all = builtin();
        let plan = plan(all.clone(), &opts(3)).unwrap();
        let framing = plan.framing.as_ref().unwrap();
        let categories: HashSet<&str> = all.iter().map(|t| t.category.as_str()).collect();
        assert_eq!(plan.held_out.len(), 3 * categories.len());
        assert_eq!(plan.scored.len() + plan.held_out.len(), all.len());
        for c in &categories {
            let first: Vec<&str> = all
                .iter()
                .filter(|t| t.category == *c)
                .take(3)
                .map(|t| t.id.as_str())
                .collect();
            for id in first {
                assert!(plan.held_out.iter().any(|h| h == id), "{id} not held out");
            }
        }
        for t in &plan.scored {
            assert!(
                !plan.held_out.contains(&t.id),
                "{} is scored and an example",
                t.id
            );
            // No scored task's prompt is in any prefix.
            for c in framing.categories() {
                let prefix = serde_json::to_string(framing.prefix_of(c).unwrap()).unwrap();
                let quoted = serde_json::to_string(&t.prompt).unwrap();
                assert!(!prefix.contains(&quoted), "{} leaks into {c}", t.id);
            }
        }
        // Solved examples show their answer: the written one when the task has it.
        let triage = framing.prefix_of("triage").unwrap();
        let answer: Value = serde_json::from_str(triage[2]["content"].as_str().unwrap()).unwrap();
        assert_eq!(answer["severity"], "critical");
        assert!(answer["reason"]
            .as_str()
            .unwrap()
            .contains("domain controller"));
        assert_eq!(
            framing.prefix_of("cmdline").unwrap()[2]["content"],
            all[0].scorer.reference_answer()
        );
        assert_eq!(plan.examples_source.as_deref(), Some("held-out tasks"));
    }

    #[test]
    fn without_shots_tasks_go_as_written() {
        let plan = plan(builtin(), &opts(0)).unwrap();
        assert!(plan.framing.is_none() && plan.held_out.is_empty());
        let m = messages(&plan.scored[0], None);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["content"], DEFAULT_POLICY);
    }

    #[test]
    fn a_user_prefix_and_an_examples_file() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("policy.txt");
        std::fs::write(&prefix, "Our SOC policy.\n").unwrap();
        let tasks: Vec<Task> = builtin()
            .into_iter()
            .filter(|t| t.category == "cmdline")
            .collect();
        let options = PrefixOptions {
            shots: 0,
            prefix_file: Some(prefix.clone()),
            examples_file: None,
        };
        let plan = plan(tasks.clone(), &options).unwrap();
        assert_eq!(
            plan.scored.len(),
            tasks.len(),
            "nothing held out without shots"
        );
        let m = messages(&plan.scored[0], plan.framing.as_ref());
        assert_eq!(m[0]["content"], "Our SOC policy.\n");
        assert_eq!(m.len(), 2);

        // Examples from a file: none held out; an example that is also scored is refused.
        let examples = dir.path().join("examples.jsonl");
        let line = |id: &str| {
            format!(
                r#"{{"id":"{id}","category":"cmdline","prompt":"Command: whoami","scorer":{{"kind":"label","answer":"benign","labels":["benign","malicious"]}}}}"#
            )
        };
        std::fs::write(&examples, format!("{}\n", line("ex-1"))).unwrap();
        let with_file = |shots| PrefixOptions {
            shots,
            prefix_file: None,
            examples_file: Some(examples.clone()),
        };
        let plan = super::plan(tasks.clone(), &with_file(1)).unwrap();
        assert!(plan.held_out.is_empty());
        assert_eq!(plan.scored.len(), tasks.len());
        let p = plan.framing.as_ref().unwrap().prefix_of("cmdline").unwrap();
        assert_eq!(p[1]["content"], "Command: whoami");
        assert_eq!(p[2]["content"], "benign");
        let msg = super::plan(tasks.clone(), &with_file(2))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1 example(s) of category `cmdline`"), "{msg}");
        std::fs::write(&examples, format!("{}\n", line("cmdline-01"))).unwrap();
        let msg = super::plan(tasks.clone(), &with_file(1))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`cmdline-01` is also a scored task"), "{msg}");

        let msg = super::plan(tasks, &opts(11)).unwrap_err().to_string();
        assert!(msg.contains("category `cmdline` has 11 task(s)"), "{msg}");
        std::fs::write(&prefix, " \n").unwrap();
        let empty = PrefixOptions {
            shots: 1,
            prefix_file: Some(prefix),
            examples_file: None,
        };
        assert!(super::plan(builtin(), &empty)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
    }
}
