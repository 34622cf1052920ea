//! Evaluation datasets: CounterFact (full and multi-CounterFact records, and the simplified
//! layout), zsRE (`zsre_mend_eval.json`, and EasyEdit's with portability), UltraEdit's
//! question-answer layouts (zsRE, UltraEditBench, WikiBigEdit), KnowEdit, MQuAKE, and plain
//! request files with optional paraphrase / neighbourhood prompts; each record becomes the
//! edits it asks for plus the tests it is scored by.

mod easyedit;
mod qa;
pub mod stream;

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::editing::requests::{parse_values_from, Request};
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
    /// zsRE as EasyEdit ships it with portability questions (`zsre_mend_eval_portability_gpt4.json`:
    /// the `zsre_mend_eval.json` fields plus `alt` and `portability` {`New Question`, `New Answer`};
    /// zjunlp/EasyEdit `examples/run_zsre_llama2.py`).
    #[serde(rename = "zsre_easyedit")]
    ZsreEasyEdit,
    /// zsRE as UltraEdit ships it (`src`, `rephrase`, `ans`, `loc`, `loc_ans`: the new answer is
    /// `ans`; XiaojieGu/UltraEdit `data/zsre.py`).
    ZsreUltraEdit,
    /// UltraEditBench (`prompt`, `rephrase_prompt`, `ans`, `loc`, `loc_ans`; XiaojieGu/UltraEdit
    /// `data/ultraeditbench.py`).
    UltraEditBench,
    /// WikiBigEdit as UltraEdit reads it (`update`, `rephrase`, `ans`, `personas`, `loc`,
    /// `loc_ans`, `mhop`, `mhop_ans`; XiaojieGu/UltraEdit `data/wikibigedit.py`).
    #[serde(rename = "wikibigedit")]
    WikiBigEdit,
    /// KnowEdit (`wiki_recent`, `wiki_counterfact`, `zsre`: `subject`, `prompt`, `target_new`,
    /// `ground_truth`, `portability`, `locality`; `wiki_bio`: `concept`, `text`, `labels`,
    /// `locality`; zjunlp/EasyEdit `examples/KnowEdit.md`, `easyeditor/dataset/knowedit.py`).
    #[serde(rename = "knowedit")]
    KnowEdit,
    /// MQuAKE (`requested_rewrite` as a list of facts, `questions`, `new_answer`,
    /// `new_answer_alias`; princeton-nlp/MQuAKE, as EasyEdit's `easyeditor/dataset/MQuAKE.py` reads it).
    Mquake,
    /// Request objects, with optional `paraphrase_prompts` / `neighborhood_prompts`.
    Requests,
}

impl DatasetFormat {
    pub fn describe(self) -> &'static str {
        match self {
            DatasetFormat::CounterFact => "CounterFact records",
            DatasetFormat::CounterFactSimplified => "simplified CounterFact records",
            DatasetFormat::Zsre => "zsRE records (zsre_mend_eval.json layout)",
            DatasetFormat::ZsreEasyEdit => "zsRE records (EasyEdit's layout, with portability)",
            DatasetFormat::ZsreUltraEdit => "zsRE records (UltraEdit's layout)",
            DatasetFormat::UltraEditBench => "UltraEditBench records",
            DatasetFormat::WikiBigEdit => "WikiBigEdit records",
            DatasetFormat::KnowEdit => "KnowEdit records",
            DatasetFormat::Mquake => "MQuAKE cases",
            DatasetFormat::Requests => "request objects",
        }
    }

    /// Every layout but CounterFact's and plain requests is scored by teacher-forced token
    /// accuracy (zsRE's protocol, EasyEdit's `test_prediction_acc`, UltraEdit's `succ_ratios`);
    /// those two by the CounterFact probability tests.
    pub fn is_zsre(self) -> bool {
        !matches!(self, DatasetFormat::CounterFact | DatasetFormat::CounterFactSimplified | DatasetFormat::Requests)
    }

    /// The layouts, their fields, for the message that refuses an unknown one.
    const KNOWN: &'static str = "CounterFact (`requested_rewrite`, `paraphrase_prompts`, `neighborhood_prompts`), simplified CounterFact \
        (`prompt`, `subject`, `target_new`, `ground_truth`, `rephrase_prompt`, `locality_prompt`), zsRE (`src`, `answers`, `rephrase`, `loc`, \
        `loc_ans`), EasyEdit's zsRE (the same plus `alt`, `portability`), UltraEdit's zsRE (`src`, `ans`, `rephrase`, `loc`, `loc_ans`), \
        UltraEditBench (`prompt`, `rephrase_prompt`, `ans`, `loc`, `loc_ans`), WikiBigEdit (`update`, `rephrase`, `ans`, `personas`, `loc`, \
        `loc_ans`, `mhop`, `mhop_ans`), KnowEdit (`subject`, `prompt`, `target_new`, `portability`, `locality`; wiki_bio: `concept`, `text`, \
        `labels`, `locality`), MQuAKE (`requested_rewrite` as a list, `questions`, `new_answer`), and edit requests (`prompt` with `{}`, \
        `subject`, `target_new`, `target_true`)";
}

/// How a probe group beyond the standard three is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Teacher-forced token accuracy of the answer after the prompt (one forward of
    /// `prompt + " " + answer`, each answer token against the prediction before it: EasyEdit's
    /// `test_prediction_acc`, UltraEdit's `succ_ratios`).
    Accuracy,
    /// The predictions at the answer's positions, scored after the edit by agreement with the
    /// unedited model's (EasyEdit's locality: `mean(post == pre)` per prompt).
    Unchanged,
}

/// One prompt of a probe group and the answer it is read against; `aliases` are other
/// acceptable answers (MQuAKE's), for the exact-answer test.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub prompt: String,
    pub answer: String,
    pub aliases: Vec<String>,
}

/// A named group of probes (`portability_Reasoning`, `locality_Forgetfulness`, `personas`,
/// `mhop`, `multihop`, ...), scored and summarised under its name. Names starting with
/// `portability_` or `locality_` are also averaged into `portability` / `locality` (per case
/// the mean over its groups, as EasyEdit's KnowEdit summary).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeGroup {
    pub name: String,
    pub kind: ProbeKind,
    pub probes: Vec<Probe>,
    /// Also score, per probe, whether the answer or one of its aliases is predicted at every
    /// token, and per record whether any probe is (MQuAKE's multi-hop accuracy).
    pub exact: bool,
}

impl ProbeGroup {
    pub fn new(name: &str, kind: ProbeKind, probes: Vec<Probe>) -> Self {
        ProbeGroup { name: name.to_string(), kind, probes, exact: false }
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
    /// Further facts the record edits together with `request` (MQuAKE's cases edit several).
    pub extra_edits: Vec<Request>,
    /// Probe groups beyond rewrite / paraphrase / neighbourhood (portability, locality, ...).
    pub groups: Vec<ProbeGroup>,
}

impl EvalRecord {
    /// A record of one edit, scored by the standard groups only.
    pub fn new(case_id: u64, request: Request, requested_rewrite: Value) -> Self {
        EvalRecord {
            case_id,
            request,
            requested_rewrite,
            zsre_locality: None,
            generation_prompts: Vec::new(),
            attribute_prompts: Vec::new(),
            extra_edits: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Every edit the record asks for.
    pub fn edits(&self) -> impl Iterator<Item = &Request> {
        std::iter::once(&self.request).chain(&self.extra_edits)
    }
}

/// A dataset: its layout and records.
pub struct Dataset {
    pub format: DatasetFormat,
    pub records: Vec<EvalRecord>,
    /// zsRE layouts: the field that gave `target_new`.
    pub zsre_target: Option<ZsreTarget>,
}

/// Reads a dataset file, detecting its layout from the first record. `zsre_target` picks the
/// new target of zsRE records; by default `answers[0]` (the reference's) for
/// `zsre_mend_eval.json` and `alt` (EasyEdit's) for EasyEdit's layout.
pub fn read_dataset(path: &Path, zsre_target: Option<ZsreTarget>) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_dataset(&text, &path.display().to_string(), zsre_target)
}

fn detect(first: &Value) -> DatasetFormat {
    let has = |k: &str| first.get(k).is_some();
    let object = |k: &str| first.get(k).is_some_and(Value::is_object);
    if first.get("requested_rewrite").is_some_and(Value::is_array) {
        DatasetFormat::Mquake
    } else if has("requested_rewrite") {
        DatasetFormat::CounterFact
    } else if has("src") && has("loc") && object("portability") {
        DatasetFormat::ZsreEasyEdit
    } else if has("src") && has("answers") && has("loc") {
        DatasetFormat::Zsre
    } else if has("src") && has("ans") && has("loc_ans") {
        DatasetFormat::ZsreUltraEdit
    } else if has("prompt") && has("rephrase_prompt") && has("ans") && has("loc_ans") {
        DatasetFormat::UltraEditBench
    } else if has("update") && has("ans") && has("loc_ans") {
        DatasetFormat::WikiBigEdit
    } else if object("locality") && (has("subject") || has("concept")) {
        DatasetFormat::KnowEdit
    } else if has("ground_truth") && has("rephrase_prompt") {
        DatasetFormat::CounterFactSimplified
    } else {
        DatasetFormat::Requests
    }
}

/// Parses a dataset (JSON list, one object, or JSON Lines); `source` names it in messages.
pub fn parse_dataset(text: &str, source: &str, zsre_target: Option<ZsreTarget>) -> Result<Dataset> {
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
    check_known(first, format, source)?;
    let zsre_target = resolve_zsre_target(format, zsre_target);
    let records = records_from_values(&values, source, format, zsre_target, 0)?;
    Ok(Dataset { format, records, zsre_target })
}

/// Refuses a first record of no known layout, naming its fields and every layout known.
fn check_known(first: &Value, format: DatasetFormat, source: &str) -> Result<()> {
    if format == DatasetFormat::Requests && (first.get("prompt").is_none() || first.get("subject").is_none()) {
        let fields: Vec<&str> = first.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(Error::Input(format!(
            "{source}: the first record's layout is not one this knows (its fields: {}). Known layouts: {}",
            fields.join(", "),
            DatasetFormat::KNOWN
        )));
    }
    Ok(())
}

/// The zsRE target a layout is read with: the one asked for, else `answers[0]` for
/// `zsre_mend_eval.json` and `alt` for EasyEdit's layout; none for the other layouts.
fn resolve_zsre_target(format: DatasetFormat, asked: Option<ZsreTarget>) -> Option<ZsreTarget> {
    match format {
        DatasetFormat::Zsre => Some(asked.unwrap_or(ZsreTarget::Answer)),
        DatasetFormat::ZsreEasyEdit => Some(asked.unwrap_or(ZsreTarget::Alt)),
        _ => None,
    }
}

/// The records of `values`, which start at index `offset` of their file.
fn records_from_values(values: &[Value], source: &str, format: DatasetFormat, zsre_target: Option<ZsreTarget>, offset: usize) -> Result<Vec<EvalRecord>> {
    match format {
        DatasetFormat::Zsre | DatasetFormat::ZsreEasyEdit => zsre_records(values, source, format, zsre_target.unwrap_or_default(), offset),
        DatasetFormat::ZsreUltraEdit | DatasetFormat::UltraEditBench | DatasetFormat::WikiBigEdit => qa::records(values, source, format, offset),
        DatasetFormat::KnowEdit => easyedit::knowedit_records(values, source, offset),
        DatasetFormat::Mquake => easyedit::mquake_records(values, source, offset),
        _ => counterfact_or_request_records(values, source, offset),
    }
}

/// CounterFact records, simplified CounterFact records and request objects.
fn counterfact_or_request_records(values: &[Value], source: &str, offset: usize) -> Result<Vec<EvalRecord>> {
    let requests = parse_values_from(values, source, offset)?;
    Ok(requests
        .into_iter()
        .zip(values)
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
            EvalRecord { generation_prompts, attribute_prompts, ..EvalRecord::new(case_id, r, requested_rewrite) }
        })
        .collect())
}

impl Dataset {
    /// Every bad record, listed at once before any work: duplicate case ids, a CounterFact record
    /// without `target_true`, and every problem the edit requests have (`requests::validate`),
    /// whether or not they are to be edited: `--method none` scores the same prompts, so a record
    /// it accepts is one every method accepts.
    pub fn check(&self, tok: &Tokenizer, n_ctx: usize, source: &str) -> Result<()> {
        self.check_with(tok, n_ctx, source, &mut std::collections::HashSet::new())
    }

    /// [`Dataset::check`] of one batch of a streamed file, `seen` holding the case ids of the
    /// batches before.
    pub fn check_with(&self, tok: &Tokenizer, n_ctx: usize, source: &str, seen: &mut std::collections::HashSet<u64>) -> Result<()> {
        let mut problems = Vec::new();
        for r in &self.records {
            if !seen.insert(r.case_id) {
                problems.push(format!("record {}: case_id {} appears twice", r.request.index, r.case_id));
            }
            if !self.format.is_zsre() && r.request.target_true.is_none() {
                problems.push(format!("record {}: no target_true; the CounterFact tests compare target_new with target_true", r.request.index));
            }
        }
        let requests: Vec<Request> = self.records.iter().flat_map(EvalRecord::edits).cloned().collect();
        if let Err(e) = crate::editing::requests::validate(&requests, tok, n_ctx) {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Input(format!("{source}: bad records; nothing was done:\n{}", problems.join("\n"))))
    }
}

/// A question-answer record's edit: `text` with `subject` (which must occur in it) as the
/// subject, or, subject-free, the whole text standing as the subject (for the methods that locate
/// one); `target_true` is the end-of-text token when the layout has no old answer (the
/// reference's zsRE convention). The error names what is wrong, for the record's message.
fn question_record(
    index: usize,
    text: &str,
    subject: Option<&str>,
    target_new: &str,
    target_true: Option<&str>,
    paraphrases: Vec<String>,
) -> std::result::Result<EvalRecord, String> {
    let (prompt, subject) = match subject {
        Some(s) if !text.contains(s) => return Err(format!("the subject {s:?} does not occur in the prompt {text:?}")),
        Some(s) => (text.replace(s, "{}"), s.to_string()),
        None => ("{}".to_string(), text.to_string()),
    };
    let target_true = target_true.unwrap_or("<|endoftext|>").to_string();
    let requested_rewrite = json!({"prompt": prompt, "subject": subject, "target_new": {"str": target_new}, "target_true": {"str": target_true}});
    let request = Request {
        index,
        case_id: Some(json!(index)),
        prompt,
        subject,
        target_new: target_new.to_string(),
        target_true: Some(target_true),
        paraphrase_prompts: paraphrases,
        neighborhood_prompts: Vec::new(),
    };
    Ok(EvalRecord::new(index as u64, request, requested_rewrite))
}

/// The string field `key` of record `v`, or a message naming it.
fn field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a str, String> {
    v.get(key).and_then(Value::as_str).ok_or_else(|| format!("no string `{key}`"))
}

/// The outcome of reading records one by one: every bad record listed at once.
fn collect_records(
    source: &str,
    what: &str,
    values: &[Value],
    offset: usize,
    mut read: impl FnMut(usize, &Value) -> std::result::Result<Option<EvalRecord>, String>,
) -> Result<Vec<EvalRecord>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, v) in values.iter().enumerate().map(|(i, v)| (offset + i, v)) {
        match read(i, v) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => problems.push(format!("record {i}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Input(format!("{source}: {} bad {what}:\n{}", problems.len(), problems.join("\n"))));
    }
    Ok(out)
}

/// zsRE records as the reference's `MENDQADataset` maps them (the locality question with "?",
/// scored against the NQ answer); EasyEdit's layout also gets its two groups, as
/// `examples/run_zsre_llama2.py` passes them: `portability_one_hop` (`New Question` against
/// `New Answer`) and `locality_neighborhood` (`loc` as is, scored post against pre). EasyEdit's
/// loader skips records whose `alt` is empty; so does this, with a warning.
fn zsre_records(values: &[Value], source: &str, format: DatasetFormat, target: ZsreTarget, offset: usize) -> Result<Vec<EvalRecord>> {
    let mut skipped = 0usize;
    let out = collect_records(source, "zsRE record(s)", values, offset, |i, v| {
        let (subject, src, rephrase, loc, loc_ans) = (field(v, "subject")?, field(v, "src")?, field(v, "rephrase")?, field(v, "loc")?, field(v, "loc_ans")?);
        let new = match target {
            ZsreTarget::Answer => v.get("answers").and_then(|a| a.get(0)).and_then(Value::as_str).ok_or("no answers[0] (the new target)")?,
            ZsreTarget::Alt => field(v, "alt").map_err(|_| "no alt (the new target)")?,
        };
        if format == DatasetFormat::ZsreEasyEdit && new.is_empty() {
            skipped += 1;
            return Ok(None);
        }
        if !loc.contains("nq question: ") {
            return Err("`loc` does not contain \"nq question: \" (the reference requires it)".into());
        }
        let mut r = question_record(i, src, Some(subject), new, None, vec![rephrase.to_string()])?;
        r.zsre_locality = Some((format!("{loc}?"), format!(" {loc_ans}")));
        if format == DatasetFormat::ZsreEasyEdit {
            let p = &v["portability"];
            let (q, a) = (field(p, "New Question").map_err(|e| format!("portability: {e}"))?, field(p, "New Answer").map_err(|e| format!("portability: {e}"))?);
            r.groups = vec![
                ProbeGroup::new("portability_one_hop", ProbeKind::Accuracy, vec![Probe::new(q, a)]),
                ProbeGroup::new("locality_neighborhood", ProbeKind::Unchanged, vec![Probe::new(loc, loc_ans)]),
            ];
        }
        Ok(Some(r))
    })?;
    if skipped > 0 {
        tracing::warn!("{source}: {skipped} record(s) with an empty `alt` skipped (as EasyEdit's ZsreDataset does)");
    }
    Ok(out)
}

impl Probe {
    pub fn new(prompt: &str, answer: &str) -> Self {
        Probe { prompt: prompt.to_string(), answer: answer.to_string(), aliases: Vec::new() }
    }
}
