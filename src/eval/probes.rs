//! The per-record tests of the reference evaluators, batched over many records:
//! - CounterFact (spec §6.2, `eval_utils_counterfact.py`): after each rewrite / paraphrase /
//!   neighbourhood prompt, the per-token average NLL of `" " + target_new` and of
//!   `" " + target_true` (read from `"{prompt} {target}"` tokenized as one text), and whether the
//!   target that should win (new; true for neighbourhood prompts) is the argmax at every token;
//! - zsRE (spec §6.4, `eval_utils_zsre.py`): per target token, teacher-forced top-1 accuracy
//!   after `prompt + decode(target[:i])`; neighbourhood prompts against the gold NQ answer;
//! - a record's further probe groups (portability, locality, personas, multi-hop): per prompt,
//!   one text `prompt + " " + answer` read at each answer token (EasyEdit's
//!   `test_prediction_acc`), keeping the predicted tokens where the group is scored against the
//!   unedited model's predictions, and, with aliases, whether any acceptable answer is predicted
//!   at every one of its tokens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::score::{score_items, target_reads, Item, Read};
use crate::editing::records::{EvalRecord, ProbeKind};
use crate::error::Result;
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// NLLs of both targets after one prompt (the reference's key names).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbPair {
    pub target_new: f64,
    pub target_true: f64,
}

/// One probe's result (one prompt of a further group).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Per answer token, whether it was the prediction before it.
    pub correct: Vec<bool>,
    /// Groups scored against the unedited model: the predicted token at each answer position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predicted: Vec<u32>,
    /// With aliases: whether the answer or one alias is predicted at every one of its tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_answer: Option<bool>,
}

impl ProbeResult {
    /// Whether a group's results are scored against the unedited model's predictions (they keep
    /// the predicted tokens) rather than by accuracy.
    pub fn against_unedited(results: &[ProbeResult]) -> bool {
        results.iter().any(|r| !r.predicted.is_empty())
    }
}

/// One record's scores on one model state (`pre` or `post` of the per-case file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseScores {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prompts_probs: Option<Vec<ProbPair>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paraphrase_prompts_probs: Option<Vec<ProbPair>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighborhood_prompts_probs: Option<Vec<ProbPair>>,
    /// R's attribute prompts (other subjects that have target_new), recorded as R does; not
    /// in the summary (R's summarize does not read them either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_prompts_probs: Option<Vec<ProbPair>>,
    pub rewrite_prompts_correct: Vec<bool>,
    pub paraphrase_prompts_correct: Vec<bool>,
    pub neighborhood_prompts_correct: Vec<bool>,
    /// The generation test (`--generation`): fluency, and the texts it was measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ngram_entropy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Vec<String>>,
    /// Consistency: TF-IDF cosine of the texts with the target's attribute snippets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_score: Option<f64>,
    /// Perplexity on the snippets about the subject itself, and those snippets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essence_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essence_text: Option<Vec<String>>,
    /// The record's further probe groups, by name, one result per probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<ProbeResult>>,
}

/// How records are scored.
#[derive(Clone, Default)]
pub struct ScoreOptions {
    /// zsRE's token accuracy instead of the CounterFact probability tests.
    pub zsre: bool,
    /// Texts per forward.
    pub batch: usize,
    /// Also score R's attribute prompts.
    pub attribute_prompts: bool,
    pub generation: Option<Generation>,
}

/// The generation test's settings: the records whose `case_id` is a multiple of `interval` (the
/// reference's `generation_test_interval`) get it, each seeded from `seed` and its case id;
/// with `snippets`, also the consistency and essence scores.
#[derive(Clone)]
pub struct Generation {
    pub seed: u64,
    pub interval: u64,
    pub snippets: Option<std::sync::Arc<super::consistency::Snippets>>,
}

/// Where one record's items sit in the flat list, and how to read them back.
enum Plan {
    /// Per prompt of the three groups, how its reads are laid out.
    CounterFact {
        groups: [usize; 4],
        layouts: Vec<Layout>,
    },
    Zsre {
        groups: [usize; 3],
        extra: Vec<GroupPlan>,
    },
}

/// A further group's items.
struct GroupPlan {
    name: String,
    /// Scored against the unedited model: the predicted tokens are kept.
    keep_predicted: bool,
    /// Whole answers (or aliases) are tested.
    exact: bool,
    /// Per probe, its items: the answer, then each alias.
    items_per_probe: Vec<usize>,
}

/// One CounterFact prompt's items: either one text "{P} {new}" carrying the new target's reads
/// and the true target's first read (the same position, when both texts share the prefix's
/// tokens, as they do unless the tokenizer merges across the space), then a second text for the
/// true target's later tokens if it has any; or two separate texts, as the reference scores them.
#[derive(Clone, Copy)]
enum Layout {
    Shared { n_new: usize, n_true: usize },
    Separate,
}

fn counterfact_items(tok: &Tokenizer, r: &EvalRecord, attribute: bool, items: &mut Vec<Item>) -> Result<Plan> {
    let req = &r.request;
    let new = req.target_new.trim_start().to_string();
    let true_ = req.target_true.as_deref().unwrap_or_default().trim_start().to_string();
    let attribute_prompts = if attribute { r.attribute_prompts.clone() } else { Vec::new() };
    let groups = [vec![req.filled_prompt()], req.paraphrase_prompts.clone(), req.neighborhood_prompts.clone(), attribute_prompts];
    let mut layouts = Vec::new();
    for prefix in groups.iter().flatten() {
        let (text_new, prefix_len, cand_new) = super::score::prompt_with_target(tok, prefix, &new)?;
        let (text_true, _, cand_true) = super::score::prompt_with_target(tok, prefix, &true_)?;
        let (texts, cands) = ([text_new, text_true], [cand_new, cand_true]);
        let shared = prefix_len >= 1 && texts.iter().all(|t| t.len() >= prefix_len) && texts[0][..prefix_len] == texts[1][..prefix_len] && !cands[1].is_empty();
        if shared {
            let mut first = target_reads(&texts[0], prefix_len, &cands[0], 0);
            first.push((prefix_len - 1, cands[1][0]));
            items.push(Item { ids: texts[0].clone(), reads: first });
            if cands[1].len() > 1 {
                items.push(Item { reads: target_reads(&texts[1], prefix_len, &cands[1], 1), ids: texts[1].clone() });
            }
            layouts.push(Layout::Shared { n_new: cands[0].len(), n_true: cands[1].len() });
        } else {
            for (ids, cand) in texts.iter().zip(&cands) {
                items.push(Item { reads: target_reads(ids, prefix_len, cand, 0), ids: ids.clone() });
            }
            layouts.push(Layout::Separate);
        }
    }
    Ok(Plan::CounterFact { groups: [1, groups[1].len(), groups[2].len(), groups[3].len()], layouts })
}

/// Per token of the answer, the prompt followed by the answer's earlier tokens, read at its last
/// position against that token. The reference builds each as the text
/// `prompt + decode(answer[:i])` and re-tokenizes the decoded token `answer[i]`: the same ids
/// for byte-level BPE, but SentencePiece decoders drop the space before the answer. A record of
/// several edits (MQuAKE) scores every edit's prompt and paraphrases with its own target, the
/// tokens of all counted together.
fn zsre_items(tok: &Tokenizer, r: &EvalRecord, items: &mut Vec<Item>) -> Result<Plan> {
    let teacher_forced = |items: &mut Vec<Item>, prompt: &str, answer: &str| -> Result<usize> {
        let input = tok.encode_input(prompt)?;
        let answer = tok.continuation(prompt, answer)?;
        for i in 0..answer.len() {
            let ids: Vec<u32> = input.iter().chain(&answer[..i]).copied().collect();
            items.push(Item { reads: vec![(ids.len() - 1, answer[i])], ids });
        }
        Ok(answer.len())
    };
    // Every edit's rewrite items, then every paraphrase item: they are read back in that order.
    let (mut n_rewrite, mut n_paraphrase) = (0, 0);
    for req in r.edits() {
        n_rewrite += teacher_forced(items, &req.filled_prompt(), &format!(" {}", req.target_new))?;
    }
    for req in r.edits() {
        for p in &req.paraphrase_prompts {
            n_paraphrase += teacher_forced(items, p, &format!(" {}", req.target_new))?;
        }
    }
    let n_loc = match &r.zsre_locality {
        Some((p, a)) => teacher_forced(items, p, a)?,
        None => 0,
    };
    let mut extra = Vec::with_capacity(r.groups.len());
    for g in &r.groups {
        let mut per_probe = Vec::with_capacity(g.probes.len());
        for probe in &g.probes {
            let answers: Vec<&String> = std::iter::once(&probe.answer).chain(&probe.aliases).collect();
            for a in &answers {
                let (ids, prefix_len, cand) = super::score::prompt_with_target(tok, &probe.prompt, a)?;
                items.push(Item { reads: target_reads(&ids, prefix_len, &cand, 0), ids });
            }
            per_probe.push(answers.len());
        }
        extra.push(GroupPlan { name: g.name.clone(), keep_predicted: g.kind == ProbeKind::Unchanged, exact: g.exact, items_per_probe: per_probe });
    }
    Ok(Plan::Zsre { groups: [n_rewrite, n_paraphrase, n_loc], extra })
}

/// Scores every record on the model as it is, in forwards of at most `batch` texts, and runs
/// the generation test where `generation` asks for it.
pub fn score_records(model: &dyn CausalLm, tok: &Tokenizer, records: &[&EvalRecord], opts: &ScoreOptions) -> Result<Vec<CaseScores>> {
    let mut out = probability_tests(model, tok, records, opts)?;
    if let Some(g) = &opts.generation {
        for (r, s) in records.iter().zip(out.iter_mut()) {
            if r.generation_prompts.is_empty() || r.case_id % g.interval.max(1) != 0 {
                continue;
            }
            let seed = g.seed.wrapping_add(r.case_id.wrapping_mul(1_000));
            let texts = super::generation::generate(model, tok, &r.generation_prompts, seed)?;
            s.ngram_entropy = Some(super::generation::ngram_entropy(&texts));
            if let Some(snips) = &g.snippets {
                let rr = &r.requested_rewrite;
                let (rel, target) = (rr["relation_id"].as_str().unwrap_or_default(), rr["target_new"]["id"].as_str().unwrap_or_default());
                let about = snips.about(rel, target);
                if about.is_empty() {
                    tracing::warn!("case {}: no attribute snippets for ({rel:?}, {target:?}); no consistency score", r.case_id);
                } else {
                    let consistency: Vec<&str> = about.iter().map(|x| x.text.as_str()).collect();
                    s.reference_score = Some(snips.similarity(&texts.join(" "), &consistency.join(" ")));
                    let essence: Vec<String> = about.iter().filter(|x| x.name == r.request.subject).map(|x| x.text.clone()).collect();
                    if !essence.is_empty() {
                        s.essence_score = Some(super::consistency::perplexity(model, tok, &essence.join(" "))?);
                        s.essence_text = Some(essence);
                    }
                }
            }
            s.text = Some(texts);
        }
    }
    Ok(out)
}

fn probability_tests(model: &dyn CausalLm, tok: &Tokenizer, records: &[&EvalRecord], opts: &ScoreOptions) -> Result<Vec<CaseScores>> {
    let mut items = Vec::new();
    let mut plans = Vec::with_capacity(records.len());
    for r in records {
        plans.push(if opts.zsre { zsre_items(tok, r, &mut items)? } else { counterfact_items(tok, r, opts.attribute_prompts, &mut items)? });
    }
    let reads = score_items(model, &items, opts.batch)?;
    let mut it = reads.into_iter();
    let mut out = Vec::with_capacity(records.len());
    for plan in plans {
        out.push(match plan {
            Plan::CounterFact { groups, layouts } => {
                let mut s = CaseScores::default();
                let mut layout = layouts.into_iter();
                for (g, &n) in groups.iter().enumerate() {
                    let mut probs = Vec::with_capacity(n);
                    let mut correct = Vec::with_capacity(n);
                    for _ in 0..n {
                        let (a, b) = match layout.next().expect("one layout per prompt") {
                            Layout::Shared { n_new, n_true } => {
                                let mut first = it.next().expect("one read list per item");
                                let mut b = first.split_off(n_new);
                                if n_true > 1 {
                                    b.extend(it.next().expect("one read list per item"));
                                }
                                (first, b)
                            }
                            Layout::Separate => (it.next().expect("one read list per item"), it.next().expect("one read list per item")),
                        };
                        probs.push(ProbPair { target_new: mean_nll(&a), target_true: mean_nll(&b) });
                        // New should win after rewrite and paraphrase prompts, true after neighbourhood ones.
                        correct.push(if g == 2 { all_top(&b) } else { all_top(&a) });
                    }
                    match g {
                        0 => (s.rewrite_prompts_probs, s.rewrite_prompts_correct) = (Some(probs), correct),
                        1 => (s.paraphrase_prompts_probs, s.paraphrase_prompts_correct) = (Some(probs), correct),
                        2 => (s.neighborhood_prompts_probs, s.neighborhood_prompts_correct) = (Some(probs), correct),
                        _ if n > 0 => s.attribute_prompts_probs = Some(probs),
                        _ => {}
                    }
                }
                s
            }
            Plan::Zsre { groups, extra } => {
                let mut take = |n: usize| -> Vec<bool> { (0..n).map(|_| it.next().expect("one read per item")[0].top).collect() };
                let rewrite_prompts_correct = take(groups[0]);
                let paraphrase_prompts_correct = take(groups[1]);
                let neighborhood_prompts_correct = take(groups[2]);
                let mut by_name = BTreeMap::new();
                for GroupPlan { name, keep_predicted, exact, items_per_probe } in extra {
                    let results = items_per_probe
                        .into_iter()
                        .map(|n| {
                            let reads: Vec<Vec<Read>> = (0..n).map(|_| it.next().expect("one read list per item")).collect();
                            ProbeResult {
                                correct: reads[0].iter().map(|r| r.top).collect(),
                                predicted: if keep_predicted { reads[0].iter().map(|r| r.predicted).collect() } else { Vec::new() },
                                any_answer: exact.then(|| reads.iter().any(|a| all_top(a))),
                            }
                        })
                        .collect();
                    by_name.insert(name, results);
                }
                CaseScores { rewrite_prompts_correct, paraphrase_prompts_correct, neighborhood_prompts_correct, groups: by_name, ..Default::default() }
            }
        });
    }
    Ok(out)
}

fn mean_nll(reads: &[Read]) -> f64 {
    reads.iter().map(|r| r.nll).sum::<f64>() / reads.len().max(1) as f64
}

fn all_top(reads: &[Read]) -> bool {
    reads.iter().all(|r| r.top)
}
