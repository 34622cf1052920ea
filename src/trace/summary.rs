//! Average effects over many traced facts, as the reference's notebook
//! (`notebooks/average_causal_effects.ipynb`) computes them: the average total effect
//! (clean − corrupted probability) and, per token group and layer, the average indirect effect
//! (the restored probability − the mean corrupted one). The groups' rows are pooled, so a
//! group with several rows per fact (the middle subject tokens, the further tokens) weights
//! facts by their row counts, as there.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{FactTrace, Kind};

/// The token groups, in the notebook's order.
pub const GROUPS: [&str; 6] = ["first_subject", "middle_subject", "last_subject", "first_after", "further", "last"];

#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    /// Facts traced (with a correct prediction, or all with `trace_expected`).
    pub facts: usize,
    pub average_low_score: f64,
    pub average_high_score: f64,
    /// Mean high − mean low score.
    pub average_total_effect: f64,
    /// Per group, per layer: mean restored score − mean low score.
    pub average_indirect_effect: BTreeMap<&'static str, Vec<f64>>,
    /// The layer where the effect at the subject's last token peaks, and its value.
    pub last_subject_peak_layer: usize,
    pub last_subject_peak: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Facts read; of them, those the model predicted (or traced anyway).
    pub facts: usize,
    pub traced: usize,
    pub kinds: BTreeMap<&'static str, KindSummary>,
    /// The peak layer of the MLP effect at the subject's last token (of the hidden-state
    /// effect when no MLP trace was run): where ROME's paper edits.
    pub suggested_layer: Option<usize>,
    pub suggested_from: Option<&'static str>,
}

fn group_rows(t: &FactTrace) -> [Vec<usize>; 6] {
    let (first_e, first_a) = t.subject_range;
    let last_e = first_a - 1;
    let last_a = t.scores.len() - 1;
    let some = |i: usize| if i <= last_a { vec![i] } else { Vec::new() };
    [vec![first_e], (first_e + 1..last_e).collect(), vec![last_e], some(first_a), (first_a + 1..last_a).collect(), vec![last_a]]
}

/// The summary of one kind's traces (those with scores).
pub fn summarize_kind(traces: &[&FactTrace]) -> Option<KindSummary> {
    let traced: Vec<&&FactTrace> = traces.iter().filter(|t| !t.scores.is_empty()).collect();
    let n_layer = traced.first()?.scores[0].len();
    let n = traced.len() as f64;
    let low = traced.iter().map(|t| t.low_score.unwrap_or(f64::NAN)).sum::<f64>() / n;
    let high = traced.iter().map(|t| t.high_score).sum::<f64>() / n;
    let mut sums = [(); 6].map(|_| (vec![0.0; n_layer], 0usize));
    for t in &traced {
        for (g, rows) in group_rows(t).iter().enumerate() {
            for &r in rows {
                for (acc, v) in sums[g].0.iter_mut().zip(&t.scores[r]) {
                    *acc += v;
                }
                sums[g].1 += 1;
            }
        }
    }
    let aie: BTreeMap<&'static str, Vec<f64>> = GROUPS
        .iter()
        .zip(sums)
        .filter(|(_, (_, count))| *count > 0)
        .map(|(name, (s, count))| (*name, s.iter().map(|v| v / count as f64 - low).collect()))
        .collect();
    let last = &aie["last_subject"];
    let (peak_layer, peak) = last.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (l, &v)| if v > best.1 { (l, v) } else { best });
    Some(KindSummary {
        facts: traced.len(),
        average_low_score: low,
        average_high_score: high,
        average_total_effect: high - low,
        average_indirect_effect: aie,
        last_subject_peak_layer: peak_layer,
        last_subject_peak: peak,
    })
}

/// The summary of all traces of a run (any kinds, one fact read `facts` times per kind).
pub fn summarize(facts: usize, traces: &[FactTrace]) -> Summary {
    let mut kinds = BTreeMap::new();
    let mut traced = 0;
    for kind in Kind::ALL {
        let of_kind: Vec<&FactTrace> = traces.iter().filter(|t| t.kind() == Some(kind)).collect();
        if let Some(s) = summarize_kind(&of_kind) {
            traced = traced.max(s.facts);
            kinds.insert(kind.name(), s);
        }
    }
    let from = ["mlp", "hidden"].into_iter().find(|k| kinds.contains_key(k));
    Summary { facts, traced, suggested_layer: from.map(|k| kinds[k].last_subject_peak_layer), suggested_from: from, kinds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(kind: &'static str, range: (usize, usize), scores: Vec<Vec<f64>>, low: f64, high: f64) -> FactTrace {
        FactTrace {
            id: None,
            prompt: String::new(),
            subject: String::new(),
            expect: None,
            kind,
            correct_prediction: true,
            answer: String::new(),
            input_ids: vec![0; scores.len()],
            input_tokens: vec![String::new(); scores.len()],
            scores,
            low_score: Some(low),
            high_score: high,
            subject_range: range,
            window: 10,
        }
    }

    #[test]
    fn averages_follow_the_notebook() {
        // Fact A: 5 tokens, subject 1..3 (first 1, last 2; no middle), then 3 (first after), 4 (last).
        let a = trace("mlp", (1, 3), vec![vec![0.0, 0.0], vec![0.2, 0.4], vec![0.6, 0.2], vec![0.1, 0.1], vec![0.3, 0.5]], 0.1, 0.9);
        // Fact B: 4 tokens, subject 0..3 (first 0, middle 1, last 2), 3 is both first-after and last.
        let b = trace("mlp", (0, 3), vec![vec![0.5, 0.5], vec![0.2, 0.2], vec![0.4, 0.8], vec![0.3, 0.1]], 0.3, 0.7);
        let s = summarize(2, &[a, b]);
        let m = &s.kinds["mlp"];
        assert_eq!(m.facts, 2);
        assert!((m.average_total_effect - (0.8 - 0.2)).abs() < 1e-12);
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12);
        assert!(close(&m.average_indirect_effect["last_subject"], &[0.5 - 0.2, 0.5 - 0.2]));
        assert!(close(&m.average_indirect_effect["first_subject"], &[0.35 - 0.2, 0.45 - 0.2]));
        assert!(close(&m.average_indirect_effect["middle_subject"], &[0.0, 0.0]));
        assert!(close(&m.average_indirect_effect["last"], &[0.3 - 0.2, 0.3 - 0.2]));
        // "further" has no rows in either fact.
        assert!(!m.average_indirect_effect.contains_key("further"));
        assert_eq!((m.last_subject_peak_layer, s.suggested_layer, s.suggested_from), (0, Some(0), Some("mlp")));
    }
}
