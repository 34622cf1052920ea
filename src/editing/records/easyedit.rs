//! The benchmarks EasyEdit's users report, read as its loaders and example scripts read them
//! (zjunlp/EasyEdit @ 14cea82):
//! - KnowEdit (`examples/KnowEdit.md`, `easyeditor/dataset/knowedit.py`,
//!   `examples/run_knowedit_llama2.py`): the edit `prompt` (or wiki_bio's `text`) with its
//!   `subject` (`concept`) and `target_new` (`labels`); each key of `portability` and `locality`
//!   is a group of `{prompt, ground_truth}` probes whose ground truth may be nested alias lists:
//!   the first alias is the answer, and probes whose answer is empty are dropped, as the script
//!   does. Portability groups are scored by token accuracy, locality groups post against pre.
//! - MQuAKE (princeton-nlp/MQuAKE's `MQuAKE-CF-3k.json` layout): every fact of
//!   `requested_rewrite` is edited (EasyEdit's `MQuAKE.py` instead joins them into one prompt and
//!   one target; the paper's protocol edits each fact), each fact's question is its paraphrase,
//!   and the case's multi-hop `questions` form the `multihop` group against `new_answer`, with
//!   `new_answer_alias` as the aliases of the paper's exact-answer test.

use serde_json::Value;

use super::{collect_records, field, question_record, EvalRecord, Probe, ProbeGroup, ProbeKind};
use crate::editing::requests::Request;
use crate::error::Result;

/// The first string of a possibly nested list (`"a"`, `["a", "b"]`, `[["a", "b"]]`), as
/// EasyEdit's `while isinstance(an, list): an = an[0]`; `None` for an empty list or null.
fn first_string(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first().and_then(first_string),
        _ => None,
    }
}

/// The probe groups of a KnowEdit `portability` or `locality` object (`family` prefixes their names).
fn knowedit_groups(v: &Value, family: &str, kind: ProbeKind) -> std::result::Result<Vec<ProbeGroup>, String> {
    let Some(obj) = v.get(family) else { return Ok(Vec::new()) };
    let Some(obj) = obj.as_object() else { return Err(format!("`{family}` is not an object of probe lists")) };
    let mut groups = Vec::new();
    for (key, list) in obj {
        let items = match list {
            Value::Array(a) => a.as_slice(),
            Value::Null => continue,
            _ => return Err(format!("`{family}.{key}` is not a list of {{prompt, ground_truth}} objects")),
        };
        let mut probes = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let prompt = item.get("prompt").and_then(first_string).ok_or_else(|| format!("`{family}.{key}[{j}]` has no string `prompt`"))?;
            let answer = item.get("ground_truth").and_then(first_string).unwrap_or_default();
            if !answer.trim().is_empty() {
                probes.push(Probe::new(prompt, answer));
            }
        }
        if !probes.is_empty() {
            groups.push(ProbeGroup::new(&format!("{family}_{key}"), kind, probes));
        }
    }
    Ok(groups)
}

pub(super) fn knowedit_records(values: &[Value], source: &str, offset: usize) -> Result<Vec<EvalRecord>> {
    collect_records(source, "KnowEdit record(s)", values, offset, |i, v| {
        let either = |a: &str, b: &str| field(v, a).or_else(|_| field(v, b)).map_err(|_| format!("no string `{a}` (or `{b}`)"));
        let (subject, prompt) = (either("subject", "concept")?, either("prompt", "text")?);
        let target_new = either("target_new", "labels")?;
        let target_true = v.get("ground_truth").and_then(first_string).filter(|s| !s.is_empty());
        let rephrase: Vec<String> = match v.get("rephrase") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        let mut r = question_record(i, prompt, Some(subject), target_new, target_true, rephrase)?;
        r.groups = knowedit_groups(v, "portability", ProbeKind::Accuracy)?;
        r.groups.extend(knowedit_groups(v, "locality", ProbeKind::Unchanged)?);
        Ok(Some(r))
    })
}

pub(super) fn mquake_records(values: &[Value], source: &str, offset: usize) -> Result<Vec<EvalRecord>> {
    collect_records(source, "MQuAKE case(s)", values, offset, |i, v| {
        let case_id = v.get("case_id").and_then(Value::as_u64).unwrap_or(i as u64);
        let facts = v["requested_rewrite"].as_array().filter(|a| !a.is_empty()).ok_or("`requested_rewrite` is an empty list")?;
        let mut edits = Vec::new();
        for (j, f) in facts.iter().enumerate() {
            let at = |e: String| format!("requested_rewrite[{j}]: {e}");
            let (prompt, subject) = (field(f, "prompt").map_err(at)?, field(f, "subject").map_err(at)?);
            let str_of = |k: &str| f.get(k).and_then(|t| t.get("str")).and_then(Value::as_str).ok_or_else(|| at(format!("no `{k}.str`")));
            let (new, old) = (str_of("target_new")?, str_of("target_true")?);
            if prompt.matches("{}").count() != 1 {
                return Err(at(format!("the prompt {prompt:?} must hold exactly one {{}} where the subject goes")));
            }
            let question = f.get("question").and_then(Value::as_str).map(str::to_string);
            edits.push(Request {
                index: i,
                case_id: Some(case_id.into()),
                prompt: prompt.to_string(),
                subject: subject.to_string(),
                target_new: new.to_string(),
                target_true: Some(old.to_string()),
                paraphrase_prompts: question.into_iter().collect(),
                neighborhood_prompts: Vec::new(),
            });
        }
        let answer = field(v, "new_answer")?;
        let aliases: Vec<String> =
            v.get("new_answer_alias").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
        let questions: Vec<&str> = v.get("questions").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if questions.is_empty() {
            return Err("no `questions` (the multi-hop questions the case is scored on)".into());
        }
        let probes = questions.iter().map(|q| Probe { aliases: aliases.clone(), ..Probe::new(q, answer) }).collect();
        let first = edits.remove(0);
        // The facts' own fields; the rest of the case is in the per-case file's other scores.
        let mut r = EvalRecord::new(case_id, first, v["requested_rewrite"].clone());
        r.extra_edits = edits;
        r.groups = vec![ProbeGroup { exact: true, ..ProbeGroup::new("multihop", ProbeKind::Accuracy, probes) }];
        Ok(Some(r))
    })
}
