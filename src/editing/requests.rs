//! Edit requests: reading them in the formats people already have, and checking all of them
//! before any work starts.
//!
//! Accepted input (JSON or JSON Lines):
//! - the reference request dict `{"prompt": "{} plays the sport of", "subject": "LeBron James",
//!   "target_new": {"str": "football"}, "target_true": {"str": "basketball"}, "case_id": 7}`,
//!   alone or in a list; `target_new` / `target_true` may also be plain strings;
//! - CounterFact / multi-CounterFact records (`{"case_id", "requested_rewrite": {...},
//!   "paraphrase_prompts": [...], "neighborhood_prompts": [...], ...}`), alone or in a list;
//! - the simplified (EasyEdit-style) CounterFact layout `{"case_id", "prompt": "<subject filled
//!   in>", "subject", "target_new": "...", "ground_truth": "...", "rephrase_prompt": "...",
//!   "locality_prompt": "..."}`: the subject's one occurrence in the prompt becomes `{}`,
//!   `ground_truth` is `target_true`, the rephrase / locality prompts are the paraphrase /
//!   neighbourhood prompts;
//! - JSON Lines: one of the above objects per line, blank lines ignored (used when the whole text
//!   is not one JSON value).
//!
//! Fields the methods do not use (`relation_id`, `pararel_idx`, `attribute_prompts`, ...) are ignored.

use std::path::Path;

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::positions::{check_locatable, SLOT};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One requested edit: in `prompt`, with `subject` in its `{}` slot, the model should continue
/// with `target_new`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Request {
    /// Position in the input (0-based): list index, or the n-th non-blank line of a JSONL file.
    #[serde(skip_serializing)]
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<Value>,
    /// The prompt with exactly one `{}` where the subject goes.
    pub prompt: String,
    pub subject: String,
    /// Exactly as given (no space added; see [`Request::target_new_spaced`]).
    #[serde(serialize_with = "str_dict")]
    pub target_new: String,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str_dict")]
    pub target_true: Option<String>,
    /// CounterFact paraphrases (filled prompts), for evaluation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paraphrase_prompts: Vec<String>,
    /// CounterFact neighbourhood prompts (other subjects), for evaluation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub neighborhood_prompts: Vec<String>,
}

fn str_dict<S: Serializer>(s: &str, ser: S) -> std::result::Result<S::Ok, S::Error> {
    json!({ "str": s }).serialize(ser)
}

fn opt_str_dict<S: Serializer>(s: &Option<String>, ser: S) -> std::result::Result<S::Ok, S::Error> {
    match s {
        Some(s) => str_dict(s, ser),
        None => ser.serialize_none(),
    }
}

impl Request {
    /// The prompt with the subject in its slot.
    pub fn filled_prompt(&self) -> String {
        self.prompt.replacen(SLOT, &self.subject, 1)
    }

    /// The target as the reference tokenizes it: with a leading space, unless it already has one.
    pub fn target_new_spaced(&self) -> String {
        spaced(&self.target_new)
    }

    /// Tokens of the filled prompt's model input and of the new target after it.
    pub fn token_count(&self, tok: &Tokenizer) -> Result<usize> {
        Ok(tok.encode_input(&self.filled_prompt())?.len() + tok.continuation(&self.filled_prompt(), &self.target_new_spaced())?.len())
    }

    /// [`Request::target_new_spaced`] for `target_true`.
    pub fn target_true_spaced(&self) -> Option<String> {
        self.target_true.as_deref().map(spaced)
    }

    /// The reference's request dict: `prompt`, `subject`, `target_new: {"str"}`, and `target_true:
    /// {"str"}` / `case_id` when present (no paraphrase or neighbourhood prompts).
    pub fn to_reference_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(id) = &self.case_id {
            m.insert("case_id".into(), id.clone());
        }
        m.insert("prompt".into(), Value::String(self.prompt.clone()));
        m.insert("subject".into(), Value::String(self.subject.clone()));
        m.insert("target_new".into(), json!({ "str": self.target_new }));
        if let Some(t) = &self.target_true {
            m.insert("target_true".into(), json!({ "str": t }));
        }
        Value::Object(m)
    }

    /// `request 3` or `request 3 (case_id 17)`, for messages.
    pub fn label(&self) -> String {
        match &self.case_id {
            Some(Value::String(s)) => format!("request {} (case_id {s})", self.index),
            Some(id) => format!("request {} (case_id {id})", self.index),
            None => format!("request {}", self.index),
        }
    }
}

fn spaced(s: &str) -> String {
    if s.starts_with(' ') {
        s.to_string()
    } else {
        format!(" {s}")
    }
}

/// Reads requests from a file (see the module documentation for the formats).
pub fn read_requests(path: &Path) -> Result<Vec<Request>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_requests(&text, &path.display().to_string())
}

/// Parses requests from JSON / JSONL text; `source` names the input in error messages.
pub fn parse_requests(text: &str, source: &str) -> Result<Vec<Request>> {
    if text.trim().is_empty() {
        return Err(Error::Input(format!(
            "{source} is empty; give a JSON list of requests such as \
             [{{\"prompt\": \"{{}} plays the sport of\", \"subject\": \"LeBron James\", \"target_new\": \"football\"}}]"
        )));
    }
    let requests = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => parse_values(&items, source)?,
        Ok(v @ Value::Object(_)) => vec![parse_one(&v, 0, &format!("{source}: request 0"))?],
        Ok(other) => {
            return Err(Error::Input(format!(
                "{source} holds a JSON {}, not requests; give a list of request objects, one object, or one \
                 object per line (JSON Lines)",
                kind(&other)
            )))
        }
        Err(whole_err) => parse_lines(text, source, &whole_err)?,
    };
    if requests.is_empty() {
        return Err(Error::Input(format!(
            "{source} holds an empty list; give at least one request such as \
             {{\"prompt\": \"{{}} plays the sport of\", \"subject\": \"LeBron James\", \"target_new\": \"football\"}}"
        )));
    }
    Ok(requests)
}

/// Requests from JSON values already parsed, one per request (`source` names them in messages).
pub fn parse_values(items: &[Value], source: &str) -> Result<Vec<Request>> {
    parse_values_from(items, source, 0)
}

/// [`parse_values`] of items that start at index `offset` of their file (a streamed batch).
pub fn parse_values_from(items: &[Value], source: &str, offset: usize) -> Result<Vec<Request>> {
    items.iter().enumerate().map(|(i, v)| parse_one(v, offset + i, &format!("{source}: request {}", offset + i))).collect()
}

/// JSON Lines: one object per non-blank line.
fn parse_lines(text: &str, source: &str, whole_err: &serde_json::Error) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.trim().is_empty() {
            continue;
        }
        let index = out.len();
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // Not JSON Lines at all: most likely one JSON document with a syntax error.
            Err(_) if index == 0 => {
                return Err(Error::Input(format!("{source} is not valid JSON ({whole_err}) nor JSON Lines; fix the syntax at that position")))
            }
            Err(e) => {
                return Err(Error::Input(format!(
                    "{source}: line {lineno} (request {index}) is not valid JSON: {e}; JSON Lines files need one \
                     complete object per line"
                )))
            }
        };
        out.push(parse_one(&v, index, &format!("{source}: line {lineno} (request {index})"))?);
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// One request dict or CounterFact record.
fn parse_one(v: &Value, index: usize, at: &str) -> Result<Request> {
    let bad = |msg: String| Error::Input(format!("{at}: {msg}"));
    let Value::Object(obj) = v else {
        return Err(bad(format!("expected an object with prompt, subject and target_new, found a {}", kind(v))));
    };
    // CounterFact records hold the request under `requested_rewrite`.
    let (req, record) = match obj.get("requested_rewrite") {
        Some(Value::Object(rr)) => (rr, Some(obj)),
        Some(other) => return Err(bad(format!("`requested_rewrite` must be an object with prompt, subject and target_new, found a {}", kind(other)))),
        None => (obj, None),
    };
    let string = |key: &str| -> Result<String> {
        match req.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(bad(format!(
                "field `{key}` is missing; every request needs prompt (with {{}} for the subject), subject and \
                 target_new"
            ))),
            Some(other) => Err(bad(format!("field `{key}` must be a string, found {other}"))),
        }
    };
    let target = |key: &str| -> Result<Option<String>> {
        match req.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("str") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(bad(format!("field `{key}` must be a string or {{\"str\": \"...\"}}, found {}", v_short(&req[key])))),
            },
            Some(other) => Err(bad(format!("field `{key}` must be a string or {{\"str\": \"...\"}}, found {}", v_short(other)))),
        }
    };
    let holder = record.unwrap_or(req);
    let strings = |key: &str| -> Result<Vec<String>> {
        match holder.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("`{key}[{i}]` must be a string, found {}", v_short(other)))),
                })
                .collect(),
            Some(other) => Err(bad(format!("field `{key}` must be a list of strings, found {}", v_short(other)))),
        }
    };
    let case_id = match record.and_then(|r| r.get("case_id")).or_else(|| req.get("case_id")) {
        None | Some(Value::Null) => None,
        Some(id @ (Value::Number(_) | Value::String(_))) => Some(id.clone()),
        Some(other) => return Err(bad(format!("`case_id` must be a number or a string, found {}", v_short(other)))),
    };
    let mut prompt = string("prompt")?;
    let subject = string("subject")?;
    let target_new =
        target("target_new")?.ok_or_else(|| bad("field `target_new` is missing; give the new object, e.g. \"target_new\": {\"str\": \"football\"}".into()))?;
    // The simplified (EasyEdit-style) CounterFact layout: the prompt has the subject filled in,
    // `ground_truth` is the old object, `rephrase_prompt` / `locality_prompt` the evaluation prompts.
    let simplified = record.is_none() && SIMPLIFIED_KEYS.iter().any(|k| req.contains_key(*k));
    if simplified && !prompt.contains(SLOT) && !subject.is_empty() && prompt.matches(subject.as_str()).count() == 1 {
        prompt = prompt.replacen(subject.as_str(), SLOT, 1);
    }
    let (target_true, paraphrase_prompts, neighborhood_prompts) = if simplified {
        let truth = match target("target_true")? {
            Some(t) => Some(t),
            None => target("ground_truth")?,
        };
        let para = [strings("paraphrase_prompts")?, strings("rephrase_prompt")?].concat();
        let neigh = [strings("neighborhood_prompts")?, strings("locality_prompt")?].concat();
        (truth, para, neigh)
    } else {
        (target("target_true")?, strings("paraphrase_prompts")?, strings("neighborhood_prompts")?)
    };
    Ok(Request { index, case_id, prompt, subject, target_new, target_true, paraphrase_prompts, neighborhood_prompts })
}

/// Fields that mark the simplified CounterFact layout (subject filled into the prompt).
const SIMPLIFIED_KEYS: &[&str] = &["ground_truth", "rephrase_prompt", "locality_prompt"];

/// A value for a message, cut short.
fn v_short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Checks every request before any work starts and reports every problem at once, one line each:
/// one `{}` in the prompt, a non-empty subject without surrounding whitespace, a non-empty target,
/// a subject the reference's position rule can locate (in the bare prompt and behind a context
/// prefix), and prompt + target within the model's `n_ctx` tokens.
pub fn validate(requests: &[Request], tok: &Tokenizer, n_ctx: usize) -> Result<()> {
    if requests.is_empty() {
        return Err(Error::Input("no requests to apply; give at least one".into()));
    }
    let mut problems = Vec::new();
    for r in requests {
        let label = r.label();
        let mut problem = |msg: String| problems.push(format!("{label}: {msg}"));
        let slots = r.prompt.matches(SLOT).count();
        let mut slot_ok = slots == 1;
        if slots != 1 {
            let hint = if slots == 0 && !r.subject.trim().is_empty() && r.prompt.contains(r.subject.trim()) {
                format!(" (e.g. {:?})", r.prompt.replacen(r.subject.trim(), SLOT, 1))
            } else {
                String::new()
            };
            problem(format!("prompt {:?} has {slots} \"{{}}\" slots; it must have exactly one, where the subject goes{hint}", r.prompt));
        }
        let subject_ok = !r.subject.trim().is_empty();
        if !subject_ok {
            problem("subject is empty; give the entity the fact is about, e.g. \"LeBron James\"".into());
        } else if r.subject != r.subject.trim() {
            slot_ok = false; // the position check would only repeat this
            problem(format!(
                "subject {:?} has leading or trailing whitespace; remove it (the reference strips it when \
                 locating the subject, so the subject's position would be wrong)",
                r.subject
            ));
        }
        if r.target_new.trim().is_empty() {
            problem("target_new is empty; give the new object, e.g. \"football\"".into());
        }
        if slot_ok && subject_ok {
            // The bare prompt, and the form behind a context prefix (`"<text>. {}"`) the methods use.
            let contexted = format!("Context. {}", r.prompt);
            if let Err(why) = check_locatable(tok, &r.prompt, &r.subject).and_then(|()| check_locatable(tok, &contexted, &r.subject)) {
                problem(why);
            }
        }
        if slot_ok && !r.target_new.trim().is_empty() {
            let n = r.token_count(tok)?;
            if n > n_ctx {
                problem(format!("prompt and target are {n} tokens, more than the model's context of {n_ctx}; shorten the prompt"));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    Err(Error::Input(format!("{n} problem{} in the requests (nothing was edited):\n{}", if n == 1 { "" } else { "s" }, problems.join("\n"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_spacing_and_filling() {
        let r = parse_requests(r#"{"prompt": "{} plays", "subject": "LeBron", "target_new": "football"}"#, "t").unwrap().remove(0);
        assert_eq!(r.filled_prompt(), "LeBron plays");
        assert_eq!(r.target_new, "football");
        assert_eq!(r.target_new_spaced(), " football");
        let mut r2 = r.clone();
        r2.target_new = " football".into();
        assert_eq!(r2.target_new_spaced(), " football");
        assert_eq!(r.to_reference_json(), json!({"prompt": "{} plays", "subject": "LeBron", "target_new": {"str": "football"}}));
        assert_eq!(serde_json::to_value(&r).unwrap(), r.to_reference_json());
    }

    #[test]
    fn counterfact_case_id_and_prompts() {
        let text = r#"{"case_id": 0, "pararel_idx": 2796, "requested_rewrite": {"prompt": "The mother tongue of {} is",
            "relation_id": "P103", "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
            "paraphrase_prompts": ["a", "b"], "neighborhood_prompts": ["c"], "attribute_prompts": ["d"]}"#;
        let r = parse_requests(text, "cf").unwrap().remove(0);
        assert_eq!(r.case_id, Some(json!(0)));
        assert_eq!(r.target_true.as_deref(), Some("French"));
        assert_eq!(r.paraphrase_prompts, vec!["a", "b"]);
        assert_eq!(r.neighborhood_prompts, vec!["c"]);
        assert_eq!(r.label(), "request 0 (case_id 0)");
        assert_eq!(
            r.to_reference_json(),
            json!({"case_id": 0, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                   "target_new": {"str": "English"}, "target_true": {"str": "French"}})
        );
    }

    #[test]
    fn errors_name_position_and_field() {
        let err = parse_requests(r#"[{"prompt": "{} a", "subject": "s", "target_new": "t"}, {"prompt": "{} a", "subject": 3, "target_new": "t"}]"#, "f.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.json: request 1") && err.contains("`subject`"), "{err}");
        let err = parse_requests("[]", "f.json").unwrap_err().to_string();
        assert!(err.contains("empty list"), "{err}");
        let err = parse_requests("{\"prompt\": \"{} a\",\n \"subject\": }", "f.json").unwrap_err().to_string();
        assert!(err.contains("not valid JSON") && err.contains("line 2"), "{err}");
    }
}
