//! UltraEdit's question-answer layouts (XiaojieGu/UltraEdit `data/zsre.py`,
//! `data/ultraeditbench.py`, `data/wikibigedit.py`), as its data classes read them: the question
//! is the edit prompt (subject-free), `ans` the new answer, the rephrased question the
//! paraphrase, and the locality question (zsRE's with `"?"` appended) scored against
//! `" " + loc_ans` token by token. WikiBigEdit adds two groups UltraEdit scores the same way:
//! `personas` (the update asked in a persona's voice) against `ans`, and `mhop` (a multi-hop
//! question through the updated fact) against `mhop_ans`; a record whose `mhop` is null or empty
//! has no multi-hop probe.

use serde_json::Value;

use super::{collect_records, field, question_record, DatasetFormat, EvalRecord, Probe, ProbeGroup, ProbeKind};
use crate::error::Result;

pub(super) fn records(values: &[Value], source: &str, format: DatasetFormat, offset: usize) -> Result<Vec<EvalRecord>> {
    let (prompt_key, rephrase_key) = match format {
        DatasetFormat::ZsreUltraEdit => ("src", "rephrase"),
        DatasetFormat::WikiBigEdit => ("update", "rephrase"),
        _ => ("prompt", "rephrase_prompt"),
    };
    let what = format!("record(s) ({} need {prompt_key}, {rephrase_key}, ans, loc and loc_ans)", format.describe());
    collect_records(source, &what, values, offset, |i, v| {
        let (question, rephrase, ans, loc, loc_ans) =
            (field(v, prompt_key)?, field(v, rephrase_key)?, field(v, "ans")?, field(v, "loc")?, field(v, "loc_ans")?);
        let mut r = question_record(i, question, None, ans, None, vec![rephrase.to_string()])?;
        let loc = if format == DatasetFormat::ZsreUltraEdit { format!("{loc}?") } else { loc.to_string() };
        r.zsre_locality = Some((loc, format!(" {loc_ans}")));
        if format == DatasetFormat::WikiBigEdit {
            r.groups.push(ProbeGroup::new("personas", ProbeKind::Accuracy, vec![Probe::new(field(v, "personas")?, ans)]));
            let mhop = v.get("mhop").and_then(Value::as_str).filter(|q| !q.trim().is_empty());
            if let Some(q) = mhop {
                let a = field(v, "mhop_ans").map_err(|e| format!("{e} (its `mhop` question has no answer)"))?;
                r.groups.push(ProbeGroup::new("mhop", ProbeKind::Accuracy, vec![Probe::new(q, a)]));
            }
        }
        Ok(Some(r))
    })
}
