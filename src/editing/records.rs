//! Evaluation datasets: CounterFact (full and multi-CounterFact records, and the simplified
//! layout), zsRE (`zsre_mend_eval.json`), and plain request files with optional paraphrase /
//! neighbourhood prompts; each record becomes a request plus the tests it is scored by.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::editing::requests::{parse_values, Request};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The layout a dataset file was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// CounterFact / multi-CounterFact records (`requested_rewrite`, `paraphrase_prompts`, ...).
    CounterFact,
    /// The simplified CounterFact layout (`prompt` filled in, `ground_truth`, `rephrase_prompt`,
    /// `locality_prompt`).
    CounterFactSimplified,
    /// zsRE in the `zsre_mend_eval.json` layout (`src`, `answers`, `rephrase`, `loc`, `loc_ans`).
    Zsre,
    /// zsRE as UltraEdit ships it (`src`, `rephrase`, `ans`, `loc`, `loc_ans`: the new answer is
    /// `ans`; XiaojieGu/UltraEdit `data/zsre.py`).
    ZsreUltraEdit,
    /// UltraEditBench (`prompt`, `rephrase_prompt`, `ans`, `loc`, `loc_ans`; XiaojieGu/UltraEdit
    /// `data/ultraeditbench.py`).
    UltraEditBench,
    /// Request objects, with optional `paraphrase_prompts` / `neighborhood_prompts`.
    Requests,
}

impl DatasetFormat {
    pub fn describe(self) -> &'static str {
        match self {
            DatasetFormat::CounterFact => "CounterFact records",
            DatasetFormat::CounterFactSimplified => "simplified CounterFact records",
            DatasetFormat::Zsre => "zsRE records (zsre_mend_eval.json layout)",
            DatasetFormat::ZsreUltraEdit => "zsRE records (UltraEdit's layout)",
            DatasetFormat::UltraEditBench => "UltraEditBench records",
            DatasetFormat::Requests => "request objects",
        }
    }

    /// zsRE and UltraEdit's question-answer layouts are scored by token accuracy; everything else
    /// by the CounterFact probability tests.
    pub fn is_zsre(self) -> bool {
        matches!(self, DatasetFormat::Zsre | DatasetFormat::ZsreUltraEdit | DatasetFormat::UltraEditBench)
    }
}

/// Which zsRE field becomes `target_new`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZsreTarget {
    /// `answers[0]`, as the reference's `MENDQADataset`.
    #[default]
    Answer,
    /// `alt`, as EasyEdit.
    Alt,
}

impl ZsreTarget {
    pub const ALL: [ZsreTarget; 2] = [ZsreTarget::Answer, ZsreTarget::Alt];

    /// The name options take and runs record (`--zsre-target answers`).
    pub fn name(self) -> &'static str {
        match self {
            ZsreTarget::Answer => "answers",
            ZsreTarget::Alt => "alt",
        }
    }
}

/// One record to edit and score.
#[derive(Clone, Debug)]
pub struct EvalRecord {
    pub case_id: u64,
    /// The edit (with its paraphrase and, for CounterFact, neighbourhood prompts).
    pub request: Request,
    /// The reference's `requested_rewrite` object (as in the file for CounterFact records).
    pub requested_rewrite: Value,
    /// zsRE: the locality prompt (`"{loc}?"`) and the NQ answer after it (`" {loc_ans}"`), scored
    /// token by token.
    pub zsre_locality: Option<(String, String)>,
    /// CounterFact: the prompts of the generation test.
    pub generation_prompts: Vec<String>,
    /// CounterFact: prompts about other subjects that have target_new (scored by R only).
    pub attribute_prompts: Vec<String>,
}

/// A dataset: its layout and records.
pub struct Dataset {
    pub format: DatasetFormat,
    pub records: Vec<EvalRecord>,
}

/// Reads a dataset file, detecting its layout from the first record.
pub fn read_dataset(path: &Path, zsre_target: ZsreTarget) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_dataset(&text, &path.display().to_string(), zsre_target)
}

fn detect(first: &Value) -> DatasetFormat {
    let has = |k: &str| first.get(k).is_some();
    if has("requested_rewrite") {
        DatasetFormat::CounterFact
    } else if has("src") && has("answers") && has("loc") {
        DatasetFormat::Zsre
    } else if has("src") && has("ans") && has("loc_ans") {
        DatasetFormat::ZsreUltraEdit
    } else if has("prompt") && has("rephrase_prompt") && has("ans") && has("loc_ans") {
        DatasetFormat::UltraEditBench
    } else if has("ground_truth") && has("rephrase_prompt") {
        DatasetFormat::CounterFactSimplified
    } else {
        DatasetFormat::Requests
    }
}

/// Parses a dataset (JSON list, one object, or JSON Lines); `source` names it in messages.
pub fn parse_dataset(text: &str, source: &str, zsre_target: ZsreTarget) -> Result<Dataset> {
    let values: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(v)) => v,
        Ok(v @ Value::Object(_)) => vec![v],
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Input(format!("{source}: record {i} is not valid JSON ({e})"))))
            .collect::<Result<_>>()?,
    };
    let Some(first) = values.first() else {
        return Err(Error::Input(format!("{source} holds no records")));
    };
    let format = detect(first);
    if format == DatasetFormat::Requests && (first.get("prompt").is_none() || first.get("subject").is_none()) {
        let fields: Vec<&str> = first.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(Error::Input(format!(
            "{source}: the first record's layout is not one this knows (its fields: {}). Known layouts: CounterFact (`requested_rewrite`, \
             `paraphrase_prompts`, `neighborhood_prompts`), simplified CounterFact (`prompt`, `subject`, `target_new`, `ground_truth`, \
             `rephrase_prompt`, `locality_prompt`), zsRE (`src`, `answers`, `rephrase`, `loc`, `loc_ans`), UltraEdit's zsRE (`src`, `ans`, \
             `rephrase`, `loc`, `loc_ans`), UltraEditBench (`prompt`, `rephrase_prompt`, `ans`, `loc`, `loc_ans`), and edit requests \
             (`prompt` with `{{}}`, `subject`, `target_new`, `target_true`)",
            fields.join(", ")
        )));
    }
    let records = if format == DatasetFormat::Zsre {
        zsre_records(&values, source, zsre_target)?
    } else if matches!(format, DatasetFormat::ZsreUltraEdit | DatasetFormat::UltraEditBench) {
        question_answer_records(&values, source, format)?
    } else {
        let requests = parse_values(&values, source)?;
        requests
            .into_iter()
            .zip(&values)
            .map(|(r, v)| {
                let case_id = r.case_id.as_ref().and_then(Value::as_u64).unwrap_or(r.index as u64);
                let requested_rewrite = match v.get("requested_rewrite") {
                    Some(rr) => rr.clone(),
                    None => {
                        let mut j = r.to_reference_json();
                        j.as_object_mut().map(|m| m.remove("case_id"));
                        j
                    }
                };
                let strings = |key: &str| -> Vec<String> {
                    v.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
                };
                let (generation_prompts, attribute_prompts) = (strings("generation_prompts"), strings("attribute_prompts"));
                EvalRecord { case_id, request: r, requested_rewrite, zsre_locality: None, generation_prompts, attribute_prompts }
            })
            .collect()
    };
    Ok(Dataset { format, records })
}

impl Dataset {
    /// Every bad record, listed at once before any work: duplicate case ids, a CounterFact record
    /// without `target_true`, and every problem the edit requests have (`requests::validate`),
    /// whether or not they are to be edited: `--method none` scores the same prompts, so a record
    /// it accepts is one every method accepts.
    pub fn check(&self, tok: &Tokenizer, n_ctx: usize, source: &str) -> Result<()> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.records {
            if !seen.insert(r.case_id) {
                problems.push(format!("record {}: case_id {} appears twice", r.request.index, r.case_id));
            }
            if !self.format.is_zsre() && r.request.target_true.is_none() {
                problems.push(format!("record {}: no target_true; the CounterFact tests compare target_new with target_true", r.request.index));
            }
        }
        let requests: Vec<Request> = self.records.iter().map(|r| r.request.clone()).collect();
        if let Err(e) = crate::editing::requests::validate(&requests, tok, n_ctx) {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Input(format!("{source}: bad records; nothing was done:\n{}", problems.join("\n"))))
    }
}

/// zsRE records as the reference's `MENDQADataset` maps them.
fn zsre_records(values: &[Value], source: &str, target: ZsreTarget) -> Result<Vec<EvalRecord>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(subject), Some(src), Some(rephrase), Some(loc), Some(loc_ans)) = (s("subject"), s("src"), s("rephrase"), s("loc"), s("loc_ans")) else {
            problems.push(format!("record {i}: a zsRE record needs the strings subject, src, rephrase, loc and loc_ans"));
            continue;
        };
        let new = match target {
            ZsreTarget::Answer => v.get("answers").and_then(|a| a.get(0)).and_then(Value::as_str).map(str::to_string),
            ZsreTarget::Alt => s("alt"),
        };
        let Some(new) = new else {
            let field = if target == ZsreTarget::Answer { "answers[0]" } else { "alt" };
            problems.push(format!("record {i}: no {field} (the new target)"));
            continue;
        };
        if !loc.contains("nq question: ") {
            problems.push(format!("record {i}: `loc` does not contain \"nq question: \" (the reference requires it)"));
            continue;
        }
        if !src.contains(&subject) {
            problems.push(format!("record {i}: the subject {subject:?} does not occur in src {src:?}"));
            continue;
        }
        let prompt = src.replace(&subject, "{}");
        let request = Request {
            index: i,
            case_id: Some(json!(i)),
            prompt: prompt.clone(),
            subject: subject.clone(),
            target_new: new.clone(),
            target_true: Some("<|endoftext|>".into()),
            paraphrase_prompts: vec![rephrase],
            neighborhood_prompts: Vec::new(),
        };
        let requested_rewrite = json!({"prompt": prompt, "subject": subject, "target_new": {"str": new}, "target_true": {"str": "<|endoftext|>"}});
        out.push(EvalRecord {
            case_id: i as u64,
            request,
            requested_rewrite,
            zsre_locality: Some((format!("{loc}?"), format!(" {loc_ans}"))),
            generation_prompts: Vec::new(),
            attribute_prompts: Vec::new(),
        });
    }
    if !problems.is_empty() {
        return Err(Error::Input(format!("{source}: {} bad zsRE record(s):\n{}", problems.len(), problems.join("\n"))));
    }
    Ok(out)
}

/// UltraEdit's question-answer records, as its data classes read them: the question is the edit
/// prompt (subject-free: the whole question stands as the subject, for the methods that locate
/// one), `ans` the new answer, the rephrased question the paraphrase, and the locality question
/// (zsRE's with `"?"` appended, `data/zsre.py`) scored against `" " + loc_ans` token by token.
fn question_answer_records(values: &[Value], source: &str, format: DatasetFormat) -> Result<Vec<EvalRecord>> {
    let (prompt_key, rephrase_key) = match format {
        DatasetFormat::ZsreUltraEdit => ("src", "rephrase"),
        _ => ("prompt", "rephrase_prompt"),
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(question), Some(rephrase), Some(ans), Some(loc), Some(loc_ans)) = (s(prompt_key), s(rephrase_key), s("ans"), s("loc"), s("loc_ans")) else {
            let missing: Vec<&str> = [prompt_key, rephrase_key, "ans", "loc", "loc_ans"].into_iter().filter(|k| s(k).is_none()).collect();
            problems.push(format!(
                "record {i}: no string {} ({} needs {prompt_key}, {rephrase_key}, ans, loc and loc_ans)",
                missing.join(", "),
                format.describe()
            ));
            continue;
        };
        let loc = if format == DatasetFormat::ZsreUltraEdit { format!("{loc}?") } else { loc };
        let request = Request {
            index: i,
            case_id: Some(json!(i)),
            prompt: "{}".into(),
            subject: question.clone(),
            target_new: ans.clone(),
            target_true: Some("<|endoftext|>".into()),
            paraphrase_prompts: vec![rephrase],
            neighborhood_prompts: Vec::new(),
        };
        let requested_rewrite = json!({"prompt": "{}", "subject": question, "target_new": {"str": ans}, "target_true": {"str": "<|endoftext|>"}});
        out.push(EvalRecord {
            case_id: i as u64,
            request,
            requested_rewrite,
            zsre_locality: Some((loc, format!(" {loc_ans}"))),
            generation_prompts: Vec::new(),
            attribute_prompts: Vec::new(),
        });
    }
    if !problems.is_empty() {
        return Err(Error::Input(format!("{source}: {} bad record(s):\n{}", problems.len(), problems.join("\n"))));
    }
    Ok(out)
}
