//! The checks of field values llama-server takes without checking them: types and ranges,
//! token ids against the vocabulary, prompts, `logit_bias`, `response_format`, the messages
//! and their content parts, tools and functions.

use super::fields::{Spec, MAX_STOP, MEDIA_PARTS, PART_TYPES};
use super::{array, grammar, present, required, wrong, Invalid, Rules};
use serde_json::{Map, Value};

/// Checks one allow-listed field's value against its [`Spec`].
pub(super) fn check_value(
    name: &str,
    spec: Spec,
    v: &Value,
    rules: &Rules<'_>,
) -> Result<(), Invalid> {
    let range = |range: String| Err(out_of_range(name, v, range));
    match spec {
        Spec::Own => {}
        Spec::Bool if !v.is_boolean() => return Err(wrong(name, "true or false", v)),
        Spec::Str if !v.is_string() => return Err(wrong(name, "a string", v)),
        Spec::Obj if !v.is_object() => return Err(wrong(name, "an object", v)),
        Spec::Arr if !v.is_array() => return Err(wrong(name, "an array", v)),
        Spec::StrOrObj if !(v.is_string() || v.is_object()) => {
            return Err(wrong(name, "a string or an object", v))
        }
        Spec::Num(lo, hi) => match v.as_f64() {
            None => return Err(wrong(name, "a number", v)),
            Some(n) if (lo..=hi).contains(&n) => {}
            Some(_) => return range(format!("a number from {lo} to {hi}")),
        },
        // A float or an integer beyond i64 is a number out of the range.
        Spec::Int(lo, hi) => match v.as_i64() {
            None if !(v.is_u64() || v.is_f64()) => return Err(wrong(name, "an integer", v)),
            Some(n) if (lo..=hi).contains(&n) => {}
            _ => return range(format!("an integer from {lo} to {hi}")),
        },
        Spec::Slots => check_slots(name, v, rules)?,
        Spec::Stop => check_stop(name, v)?,
        Spec::LogitBias => check_logit_bias(name, v, rules)?,
        Spec::Prompt => check_prompt(name, v, rules)?,
        Spec::Schema => schema(name, v, rules)?,
        Spec::Grammar => check_grammar(name, v, rules)?,
        Spec::OneOf(options) if !v.as_str().is_some_and(|s| options.contains(&s)) => {
            return range(format!("one of {}", options.join(", ")));
        }
        _ => {}
    }
    Ok(())
}

/// `n`: a whole number of choices, at most the profile's slots.
fn check_slots(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    match v.as_f64() {
        None => Err(wrong(name, "a whole number of choices", v)),
        Some(n) if n < 1.0 || n.fract() != 0.0 => Err(out_of_range(
            name,
            v,
            "a whole number of choices, at least 1",
        )),
        Some(n) if n > rules.slots as f64 => Err(Invalid::AboveSlots {
            field: "n",
            asked: v.to_string(),
            slots: rules.slots,
            profile: rules.profile.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// `stop`: a string or an array of at most [`MAX_STOP`] strings.
fn check_stop(name: &str, v: &Value) -> Result<(), Invalid> {
    match v {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            if items.len() > MAX_STOP {
                return Err(out_of_range(
                    name,
                    v,
                    format!("at most {MAX_STOP} stop sequences"),
                ));
            }
            for (i, s) in items.iter().enumerate() {
                if !s.is_string() {
                    return Err(wrong(&format!("{name}[{i}]"), "a string", s));
                }
            }
            Ok(())
        }
        _ => Err(wrong(name, "a string or an array of strings", v)),
    }
}

/// A GBNF `grammar`: only where the profile allows it, within `[proxy.grammar]`.
fn check_grammar(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    if !rules.grammar {
        return Err(Invalid::GrammarOff {
            profile: rules.profile.to_string(),
        });
    }
    let Some(text) = v.as_str() else {
        return Err(wrong(name, "a GBNF grammar (a string)", v));
    };
    Ok(grammar::check_grammar(name, text, rules.limits)?)
}

/// `field`'s value `v` is outside `range`.
fn out_of_range(field: &str, v: &Value, range: impl Into<String>) -> Invalid {
    Invalid::OutOfRange {
        field: field.to_string(),
        value: v.to_string(),
        range: range.into(),
    }
}

/// A token id: an integer, inside the vocabulary when its size is known.
pub(super) fn token(field: &str, v: &Value, vocab: Option<u64>) -> Result<(), Invalid> {
    if !(v.is_i64() || v.is_u64()) {
        return Err(wrong(field, "an integer token id", v));
    }
    let limit = vocab.unwrap_or(i32::MAX as u64);
    match v.as_u64() {
        Some(id) if id < limit => Ok(()),
        _ => Err(Invalid::NotAToken {
            field: field.to_string(),
            id: v.to_string(),
            vocab: limit,
        }),
    }
}

/// `prompt` / `input`: text, token ids, or an array of either (token ids checked).
fn check_prompt(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let expected = "a string, token ids, or an array of strings or of token-id arrays";
    match v {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{name}[{i}]");
                match item {
                    Value::String(_) => {}
                    Value::Number(_) => token(&at, item, rules.vocab_size)?,
                    Value::Array(ids) => {
                        for (j, id) in ids.iter().enumerate() {
                            token(&format!("{at}[{j}]"), id, rules.vocab_size)?;
                        }
                    }
                    _ => return Err(wrong(&at, expected, item)),
                }
            }
            Ok(())
        }
        _ => Err(wrong(name, expected, v)),
    }
}

/// `logit_bias`: OpenAI's object (token id -> bias from -100 to 100) or llama.cpp's array of
/// `[token, bias]` pairs; a bias may be `false` (never this token).
fn check_logit_bias(name: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let bias = |field: String, b: &Value| -> Result<(), Invalid> {
        match b {
            Value::Bool(false) => Ok(()),
            Value::Number(n) if n.as_f64().is_some_and(|n| (-100.0..=100.0).contains(&n)) => Ok(()),
            Value::Number(_) => Err(out_of_range(
                &field,
                b,
                "a bias from -100 to 100 (or false)",
            )),
            _ => Err(wrong(&field, "a number from -100 to 100 (or false)", b)),
        }
    };
    match v {
        Value::Object(m) => {
            for (k, b) in m {
                if let Ok(id) = k.parse::<i64>() {
                    token(&format!("{name}.{k}"), &Value::from(id), rules.vocab_size)?;
                }
                bias(format!("{name}.{k}"), b)?;
            }
            Ok(())
        }
        Value::Array(pairs) => {
            for (i, p) in pairs.iter().enumerate() {
                let at = format!("{name}[{i}]");
                match p.as_array().map(Vec::as_slice) {
                    Some([t, b]) => {
                        if t.is_number() {
                            token(&format!("{at}[0]"), t, rules.vocab_size)?;
                        } else if !t.is_string() {
                            return Err(wrong(&format!("{at}[0]"), "a token id or a string", t));
                        }
                        bias(format!("{at}[1]"), b)?;
                    }
                    _ => return Err(wrong(&at, "a [token, bias] pair", p)),
                }
            }
            Ok(())
        }
        _ => Err(wrong(name, "an object of token ids to biases", v)),
    }
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema"}`, its schema measured.
pub(super) fn check_response_format(
    obj: &Map<String, Value>,
    rules: &Rules<'_>,
) -> Result<(), Invalid> {
    let Some(v) = present(obj, "response_format") else {
        return Ok(());
    };
    let Some(rf) = v.as_object() else {
        return Err(wrong("response_format", "an object", v));
    };
    let kind = required(rf, "type", "response_format.type")?;
    let kinds = Spec::OneOf(&["text", "json_object", "json_schema"]);
    check_value("response_format.type", kinds, kind, rules)?;
    if let Some(s) = present(rf, "schema") {
        schema("response_format.schema", s, rules)?;
    }
    if let Some(js) = present(rf, "json_schema") {
        let Some(js) = js.as_object() else {
            return Err(wrong("response_format.json_schema", "an object", js));
        };
        if let Some(s) = present(js, "schema") {
            schema("response_format.json_schema.schema", s, rules)?;
        }
    }
    Ok(())
}

fn schema(field: &str, v: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    match v {
        Value::Object(_) => Ok(grammar::check_schema(field, v, rules.limits)?),
        Value::Bool(_) => Ok(()),
        _ => Err(wrong(field, "a JSON schema (an object)", v)),
    }
}

pub(super) fn check_messages(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let v = required(obj, "messages", "messages")?;
    let Some(messages) = v.as_array() else {
        return Err(wrong("messages", "an array of messages", v));
    };
    for (i, m) in messages.iter().enumerate() {
        let at = |k: &str| format!("messages[{i}].{k}");
        let Some(m) = m.as_object() else {
            return Err(wrong(&format!("messages[{i}]"), "an object", m));
        };
        string(m, "role", &at("role"), true)?;
        string(m, "name", &at("name"), false)?;
        match present(m, "content") {
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter().enumerate() {
                    check_part(&format!("messages[{i}].content[{j}]"), p, rules)?;
                }
            }
            Some(Value::String(_)) | None => {}
            Some(c) => return Err(wrong(&at("content"), "a string or an array of parts", c)),
        }
    }
    Ok(())
}

fn check_part(part: &str, p: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(p) = p.as_object() else {
        return Err(wrong(part, "an object", p));
    };
    match required(p, "type", &format!("{part}.type"))? {
        Value::String(t) if t == "text" => string(p, "text", &format!("{part}.text"), true),
        Value::String(t) if MEDIA_PARTS.contains(&t.as_str()) && !rules.projector => {
            Err(Invalid::NoProjector {
                field: part.to_string(),
                kind: t.clone(),
            })
        }
        Value::String(t) if PART_TYPES.contains(&t.as_str()) => Ok(()),
        Value::String(t) => Err(Invalid::UnknownPart {
            field: part.to_string(),
            kind: t.clone(),
        }),
        t => Err(wrong(&format!("{part}.type"), "a string", t)),
    }
}

pub(super) fn check_tools(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(tools) = array(obj, "tools", "an array of tools")? else {
        return Ok(());
    };
    for (i, t) in tools.iter().enumerate() {
        let Some(t) = t.as_object() else {
            return Err(wrong(&format!("tools[{i}]"), "an object", t));
        };
        match required(t, "type", &format!("tools[{i}].type"))? {
            Value::String(ty) if ty == "function" => {
                let at = format!("tools[{i}].function");
                check_function(&at, required(t, "function", &at)?, rules)?;
            }
            Value::String(_) => {}
            ty => return Err(wrong(&format!("tools[{i}].type"), "a string", ty)),
        }
    }
    Ok(())
}

/// The deprecated `functions`: an array of functions, as in `tools`.
pub(super) fn check_functions(obj: &Map<String, Value>, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(functions) = array(obj, "functions", "an array of functions")? else {
        return Ok(());
    };
    for (i, f) in functions.iter().enumerate() {
        check_function(&format!("functions[{i}]"), f, rules)?;
    }
    Ok(())
}

/// A function: an object with a string `name`; its `parameters` schema measured.
fn check_function(at: &str, f: &Value, rules: &Rules<'_>) -> Result<(), Invalid> {
    let Some(f) = f.as_object() else {
        return Err(wrong(at, "an object", f));
    };
    string(f, "name", &format!("{at}.name"), true)?;
    if let Some(p) = present(f, "parameters") {
        schema(&format!("{at}.parameters"), p, rules)?;
    }
    Ok(())
}

/// `key` of `obj` (`field` in the messages): a string, or absent unless `needed`.
fn string(obj: &Map<String, Value>, key: &str, field: &str, needed: bool) -> Result<(), Invalid> {
    match present(obj, key) {
        None if needed => Err(Invalid::Missing {
            field: field.to_string(),
        }),
        Some(v) if !v.is_string() => Err(wrong(field, "a string", v)),
        _ => Ok(()),
    }
}
