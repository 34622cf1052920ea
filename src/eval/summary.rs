//! Per-case results and their summary, with the reference's keys and conventions
//! (`experiments/summarize.py`): per case the mean over its prompts, then the mean and the
//! (population) standard deviation over cases, ×100 and rounded to 2 decimals (not `time`), and
//! `*_score` = the harmonic mean of the rewrite, paraphrase and neighbourhood success means.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::probes::{CaseScores, ProbPair, ProbeResult};

/// One line of `cases.jsonl`: the reference's per-case layout, plus `error` for a record whose
/// edit failed (then `post` is absent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case_id: u64,
    pub requested_rewrite: Value,
    pub num_edits: usize,
    pub grouped_case_ids: Vec<u64>,
    /// Seconds the chunk's edit took.
    pub time: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<CaseScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<CaseScores>,
    /// Why the edit of this record's chunk failed (a numerical failure), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CaseResult {
    /// `record`'s line: edited in a chunk of `grouped` records that took `time` seconds (or
    /// failed with `error`), with its scores before and after.
    pub fn new(
        record: &crate::editing::records::EvalRecord,
        num_edits: usize,
        grouped: &[u64],
        time: f64,
        pre: Option<CaseScores>,
        post: Option<CaseScores>,
        error: &Option<String>,
    ) -> Self {
        CaseResult {
            case_id: record.case_id,
            requested_rewrite: record.requested_rewrite.clone(),
            num_edits,
            grouped_case_ids: grouped.to_vec(),
            time,
            pre,
            post,
            error: error.clone(),
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn std(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

fn indicator(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// One case's per-prompt means, under the summary's key names (`{prefix}_rewrite_success`, ...);
/// `pre` is the unedited model's scores, which groups scored by agreement are compared with.
fn case_means(prefix: &str, s: &CaseScores, pre: Option<&CaseScores>, out: &mut Vec<(String, f64)>) {
    let probs: [(&str, &Option<Vec<ProbPair>>, bool); 3] = [
        ("rewrite", &s.rewrite_prompts_probs, true),
        ("paraphrase", &s.paraphrase_prompts_probs, true),
        ("neighborhood", &s.neighborhood_prompts_probs, false),
    ];
    for (name, p, new_wins) in probs {
        let Some(p) = p.as_ref().filter(|p| !p.is_empty()) else { continue };
        let success: Vec<f64> = p.iter().map(|x| indicator(if new_wins { x.target_true > x.target_new } else { x.target_true < x.target_new })).collect();
        let diff: Vec<f64> = p
            .iter()
            .map(|x| {
                let (n, t) = ((-x.target_new).exp(), (-x.target_true).exp());
                if new_wins {
                    n - t
                } else {
                    t - n
                }
            })
            .collect();
        out.push((format!("{prefix}_{name}_success"), mean(&success)));
        out.push((format!("{prefix}_{name}_diff"), mean(&diff)));
    }
    for (name, v) in [("ngram_entropy", s.ngram_entropy), ("reference_score", s.reference_score), ("essence_score", s.essence_score)] {
        if let Some(v) = v {
            out.push((format!("{prefix}_{name}"), v));
        }
    }
    for (name, c) in [("rewrite", &s.rewrite_prompts_correct), ("paraphrase", &s.paraphrase_prompts_correct), ("neighborhood", &s.neighborhood_prompts_correct)]
    {
        if !c.is_empty() {
            let v: Vec<f64> = c.iter().map(|&b| indicator(b)).collect();
            out.push((format!("{prefix}_{name}_acc"), mean(&v)));
        }
    }
    group_means(prefix, s, pre, out);
}

/// The further groups: per group `{prefix}_{name}_acc`, the mean over its probes of the share of
/// answer tokens predicted (or, for groups scored against the unedited model, of positions
/// where the prediction is unchanged: not reported for `pre`), and `{prefix}_{name}_exact`
/// where whole answers are tested (1 when any probe's answer or alias is predicted whole);
/// then `{prefix}_portability_acc` / `{prefix}_locality_acc`, the mean over the case's groups of
/// that family (EasyEdit's KnowEdit summary).
fn group_means(prefix: &str, s: &CaseScores, pre: Option<&CaseScores>, out: &mut Vec<(String, f64)>) {
    let mut families: Vec<(&str, Vec<f64>)> = vec![("portability", Vec::new()), ("locality", Vec::new())];
    for (name, results) in &s.groups {
        let unchanged = ProbeResult::against_unedited(results);
        let per_probe: Vec<f64> = if unchanged {
            let Some(before) = pre.filter(|_| prefix != "pre").and_then(|p| p.groups.get(name)) else { continue };
            results.iter().zip(before).map(|(a, b)| mean(&a.predicted.iter().zip(&b.predicted).map(|(x, y)| indicator(x == y)).collect::<Vec<_>>())).collect()
        } else {
            results.iter().map(|r| mean(&r.correct.iter().map(|&b| indicator(b)).collect::<Vec<_>>())).collect()
        };
        let per_probe: Vec<f64> = per_probe.into_iter().filter(|x| !x.is_nan()).collect();
        if per_probe.is_empty() {
            continue;
        }
        let m = mean(&per_probe);
        out.push((format!("{prefix}_{name}_acc"), m));
        if results.iter().any(|r| r.any_answer.is_some()) {
            out.push((format!("{prefix}_{name}_exact"), indicator(results.iter().any(|r| r.any_answer == Some(true)))));
        }
        for (family, values) in families.iter_mut() {
            if name.strip_prefix(*family).is_some_and(|rest| rest.starts_with('_')) {
                values.push(m);
            }
        }
    }
    for (family, values) in families {
        if !values.is_empty() {
            out.push((format!("{prefix}_{family}_acc"), mean(&values)));
        }
    }
}

/// numpy's `around(x, 2)`: round half to even.
fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// The harmonic mean of positive values; 0 when any is 0 (scipy's `hmean`).
fn hmean(v: &[f64]) -> f64 {
    if v.iter().any(|&x| x <= 0.0) {
        return 0.0;
    }
    v.len() as f64 / v.iter().map(|x| 1.0 / x).sum::<f64>()
}

/// A summary built case by case (a streamed run holds only these per-case means, not the cases).
#[derive(Default)]
pub struct Summarizer {
    sums: Vec<(String, Vec<f64>)>,
    num_cases: usize,
}

impl Summarizer {
    fn push(&mut self, means: Vec<(String, f64)>) {
        for (k, v) in means {
            match self.sums.iter_mut().find(|(n, _)| *n == k) {
                Some((_, list)) => list.push(v),
                None => self.sums.push((k, vec![v])),
            }
        }
    }

    /// One case: its time, `pre` and `post` means, and its `final` scores if it has them.
    pub fn add(&mut self, c: &CaseResult, final_scores: Option<&CaseScores>) {
        self.num_cases += 1;
        let mut means = vec![("time".to_string(), c.time)];
        for (prefix, s) in [("pre", c.pre.as_ref()), ("post", c.post.as_ref()), ("final", final_scores)] {
            if let Some(s) = s {
                case_means(prefix, s, c.pre.as_ref(), &mut means);
            }
        }
        self.push(means);
    }

    /// A case's `final` scores, apart from the case (a streamed run's second pass); `pre` is its
    /// unedited scores, for the groups scored against them.
    pub fn add_final(&mut self, pre: Option<&CaseScores>, final_scores: &CaseScores) {
        let mut means = Vec::new();
        case_means("final", final_scores, pre, &mut means);
        self.push(means);
    }

    /// Every metric as `[mean, std]`, ×100 and rounded except `time`; `{prefix}_score` as
    /// `[hmean, null]`; and `num_cases`.
    pub fn finish(self) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in &self.sums {
            let (m, s) = (mean(v), std(v));
            // As the reference: everything ×100 and rounded but the essence perplexity and time.
            let value = if k == "time" || k.ends_with("essence_score") { json!([m, s]) } else { json!([round2(m * 100.0), round2(s * 100.0)]) };
            out.insert(k.clone(), value);
        }
        for prefix in ["pre", "post", "final"] {
            let keys = ["rewrite", "paraphrase", "neighborhood"].map(|n| format!("{prefix}_{n}_success"));
            let means: Option<Vec<f64>> = keys.iter().map(|k| out.get(k).and_then(|v| v[0].as_f64())).collect();
            if let Some(m) = means {
                out.insert(format!("{prefix}_score"), json!([hmean(&m), null]));
            }
        }
        out.insert("num_cases".into(), json!(self.num_cases));
        out
    }
}

/// The summary of `cases` (those with scores for a prefix count for it): every metric as
/// `[mean, std]`, ×100 and rounded except `time`; `{prefix}_score` as `[hmean, null]`; and
/// `num_cases`. `extra` adds states beyond `pre`/`post` (e.g. `final` scores after a sequential run).
pub fn summarize<'a>(cases: impl IntoIterator<Item = (&'a CaseResult, Option<&'a CaseScores>)>) -> Map<String, Value> {
    let mut s = Summarizer::default();
    for (c, extra) in cases {
        s.add(c, extra);
    }
    s.finish()
}

/// The summary of one `num_edits` value: [`summarize`] of its cases (with their `final` scores
/// when a sequential run has them), plus `num_edits` and `num_failed`.
pub fn summary_of(num_edits: usize, cases: &[CaseResult], finals: &[(u64, CaseScores)]) -> Map<String, Value> {
    let final_of: std::collections::HashMap<u64, &CaseScores> = finals.iter().map(|(id, s)| (*id, s)).collect();
    let mut summary = summarize(cases.iter().map(|c| (c, final_of.get(&c.case_id).copied())));
    summary.insert("num_edits".into(), json!(num_edits));
    summary.insert("num_failed".into(), json!(cases.iter().filter(|c| c.error.is_some()).count()));
    summary
}

/// The post-edit metrics people read first, as (column label, summary key): CounterFact's
/// ES PS NS Score EM PM NM, or zsRE's three accuracies. The table prints them all; the plot
/// draws those in %, the first four (three for zsRE).
pub fn headline_metrics(zsre: bool) -> &'static [(&'static str, &'static str)] {
    if zsre {
        &[("Efficacy", "post_rewrite_acc"), ("Paraphrase", "post_paraphrase_acc"), ("Specificity", "post_neighborhood_acc")]
    } else {
        &[
            ("ES", "post_rewrite_success"),
            ("PS", "post_paraphrase_success"),
            ("NS", "post_neighborhood_success"),
            ("Score", "post_score"),
            ("EM", "post_rewrite_diff"),
            ("PM", "post_paraphrase_diff"),
            ("NM", "post_neighborhood_diff"),
        ]
    }
}

/// Whether a summary key is a further group's post-edit headline for the table: the
/// portability / locality means and the groups of no family (`personas`, `mhop`, `multihop`
/// and its exact-answer rate); the single groups of a family stay in `summary.json`.
pub fn is_group_headline(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("post_") else { return false };
    if matches!(rest, "portability_acc" | "locality_acc") {
        return true;
    }
    let standard = ["rewrite_", "paraphrase_", "neighborhood_", "portability_", "locality_"].iter().any(|p| rest.starts_with(p));
    !standard && (rest.ends_with("_acc") || rest.ends_with("_exact"))
}

/// Whether a summary key is a metric [`summary_of`] computes (as opposed to run metadata).
pub fn is_metric(key: &str) -> bool {
    ["pre_", "post_", "final_"].iter().any(|p| key.starts_with(p)) || matches!(key, "time" | "num_cases" | "num_edits" | "num_failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(time: f64, post: CaseScores) -> CaseResult {
        CaseResult { case_id: 0, requested_rewrite: json!({}), num_edits: 1, grouped_case_ids: vec![0], time, pre: None, post: Some(post), error: None }
    }

    #[test]
    fn the_reference_conventions_by_hand() {
        let p = |n: f64, t: f64| ProbPair { target_new: n, target_true: t };
        // Case A: rewrite won (1.0 < 2.0), paraphrases 1 of 2, neighbourhood kept 2 of 2.
        let a = CaseScores {
            rewrite_prompts_probs: Some(vec![p(1.0, 2.0)]),
            paraphrase_prompts_probs: Some(vec![p(1.0, 2.0), p(3.0, 2.0)]),
            neighborhood_prompts_probs: Some(vec![p(5.0, 1.0), p(4.0, 1.0)]),
            rewrite_prompts_correct: vec![true],
            paraphrase_prompts_correct: vec![true, false],
            neighborhood_prompts_correct: vec![false, false],
            ..Default::default()
        };
        // Case B: nothing worked.
        let b = CaseScores {
            rewrite_prompts_probs: Some(vec![p(3.0, 1.0)]),
            paraphrase_prompts_probs: Some(vec![p(3.0, 1.0), p(3.0, 1.0)]),
            neighborhood_prompts_probs: Some(vec![p(1.0, 3.0), p(1.0, 3.0)]),
            rewrite_prompts_correct: vec![false],
            paraphrase_prompts_correct: vec![false, false],
            neighborhood_prompts_correct: vec![false, false],
            ..Default::default()
        };
        let (ca, cb) = (case(1.0, a), case(3.0, b));
        let s = summarize([(&ca, None), (&cb, None)]);
        // ES: per case 1 and 0 → mean 50, std 50. PS: 0.5 and 0 → 25 ± 25. NS: 1 and 0 → 50 ± 50.
        assert_eq!(s["post_rewrite_success"], json!([50.0, 50.0]));
        assert_eq!(s["post_paraphrase_success"], json!([25.0, 25.0]));
        assert_eq!(s["post_neighborhood_success"], json!([50.0, 50.0]));
        // EM: case A e^-1 - e^-2 = 0.232544..., case B e^-3 - e^-1 = -0.318092... → mean -4.28, std 27.53.
        let (ea, eb) = ((-1f64).exp() - (-2f64).exp(), (-3f64).exp() - (-1f64).exp());
        assert_eq!(s["post_rewrite_diff"], json!([round2((ea + eb) / 2.0 * 100.0), round2((ea - eb).abs() / 2.0 * 100.0)]));
        assert_eq!(s["post_rewrite_diff"][0], json!(-4.28));
        // Score = hmean(50, 25, 50) = 3 / (1/50 + 1/25 + 1/50) = 37.5.
        assert_eq!(s["post_score"], json!([37.5, null]));
        assert_eq!(s["post_rewrite_acc"], json!([50.0, 50.0]));
        assert_eq!(s["post_neighborhood_acc"], json!([0.0, 0.0]));
        assert_eq!(s["time"], json!([2.0, 1.0]));
        assert_eq!(s["num_cases"], json!(2));
        assert!(s.get("pre_rewrite_success").is_none());
        assert_eq!(round2(0.125 * 100.0 / 100.0), 0.12, "half to even, as numpy");
    }

    #[test]
    fn further_groups_by_hand() {
        let acc = |c: &[bool]| ProbeResult { correct: c.to_vec(), ..Default::default() };
        let pred = |p: &[u32]| ProbeResult { correct: vec![true; p.len()], predicted: p.to_vec(), any_answer: None };
        let exact = |c: &[bool], any: bool| ProbeResult { correct: c.to_vec(), predicted: Vec::new(), any_answer: Some(any) };
        let scores =
            |groups: Vec<(&str, Vec<ProbeResult>)>| CaseScores { groups: groups.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), ..Default::default() };
        // Case A. Portability: Reasoning probes 1/2 and 1/1 tokens right → 0.75; Subject_Aliasing 0/1 → 0.
        // Locality: Relation_Specificity predicted [5, 6] before, [5, 7] after → 0.5; Forgetfulness [9] → [9]: 1.
        // Multi-hop: tokens 1/1 and 0/2 → 0.5; the first question's answer whole → exact 1.
        let pre_a = scores(vec![
            ("portability_Reasoning", vec![acc(&[false, false]), acc(&[false])]),
            ("portability_Subject_Aliasing", vec![acc(&[false])]),
            ("locality_Relation_Specificity", vec![pred(&[5, 6])]),
            ("locality_Forgetfulness", vec![pred(&[9])]),
            ("multihop", vec![exact(&[false], false), exact(&[false, false], false)]),
        ]);
        let post_a = scores(vec![
            ("portability_Reasoning", vec![acc(&[true, false]), acc(&[true])]),
            ("portability_Subject_Aliasing", vec![acc(&[false])]),
            ("locality_Relation_Specificity", vec![pred(&[5, 7])]),
            ("locality_Forgetfulness", vec![pred(&[9])]),
            ("multihop", vec![exact(&[true], true), exact(&[false, false], false)]),
        ]);
        // Case B: one portability group, all right; locality all changed; multi-hop nothing.
        let pre_b = scores(vec![
            ("portability_Reasoning", vec![acc(&[false])]),
            ("locality_Relation_Specificity", vec![pred(&[1, 2])]),
            ("multihop", vec![exact(&[false], false)]),
        ]);
        let post_b = scores(vec![
            ("portability_Reasoning", vec![acc(&[true])]),
            ("locality_Relation_Specificity", vec![pred(&[3, 4])]),
            ("multihop", vec![exact(&[false], false)]),
        ]);
        let mut a = case(1.0, post_a);
        a.pre = Some(pre_a);
        let mut b = case(1.0, post_b);
        b.pre = Some(pre_b);
        let s = summarize([(&a, None), (&b, None)]);
        // Reasoning: 0.75 and 1 → 87.5 ± 12.5. Subject_Aliasing: case A only, 0.
        assert_eq!(s["post_portability_Reasoning_acc"], json!([87.5, 12.5]));
        assert_eq!(s["post_portability_Subject_Aliasing_acc"], json!([0.0, 0.0]));
        // Portability per case: A mean(0.75, 0) = 0.375, B 1 → 68.75 ± 31.25 (EasyEdit's per-case mean over keys).
        assert_eq!(s["post_portability_acc"], json!([68.75, 31.25]));
        // Locality per case: A mean(0.5, 1) = 0.75, B 0 → 37.5 ± 37.5; not reported before the edit.
        assert_eq!(s["post_locality_Relation_Specificity_acc"], json!([25.0, 25.0]));
        assert_eq!(s["post_locality_acc"], json!([37.5, 37.5]));
        assert!(s.get("pre_locality_acc").is_none() && s.get("pre_locality_Forgetfulness_acc").is_none());
        // Multi-hop: A 0.5, B 0 → 25 ± 25; exact A 1, B 0 → 50 ± 50.
        assert_eq!(s["post_multihop_acc"], json!([25.0, 25.0]));
        assert_eq!(s["post_multihop_exact"], json!([50.0, 50.0]));
        assert_eq!(s["pre_multihop_exact"], json!([0.0, 0.0]));
        assert!(s.get("post_multihop_portability_acc").is_none() && s.get("post_score").is_none());
        for k in ["post_portability_acc", "post_locality_acc", "post_multihop_acc", "post_multihop_exact"] {
            assert!(is_group_headline(k), "{k}");
        }
        assert!(!is_group_headline("post_portability_Reasoning_acc") && !is_group_headline("post_rewrite_acc") && !is_group_headline("pre_multihop_acc"));
    }
}
