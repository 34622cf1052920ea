//! Tracing a list of facts: the driver `edit trace` and any other caller share (the facts'
//! subjects checked first, the noise level resolved, facts side by side where the thread plan
//! allows, each fact's traces handed back in order as they finish).

use super::{embedding_std, prepare, trace_kind, Fact, FactTrace, Kind, NoiseRule, TraceOptions};
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;

/// Sets `opts`' noise level from `rule`: a fixed level, uniform noise, or (the reference's
/// default) `k` × the standard deviation of `subjects`' token embeddings. Returns that
/// standard deviation when it was measured.
pub fn resolve_noise(model: &dyn CausalLm, tok: &Tokenizer, rule: NoiseRule, subjects: &[&str], opts: &mut TraceOptions) -> Result<Option<f64>> {
    let (level, uniform, std) = match rule {
        NoiseRule::Fixed(x) => (x, false, None),
        NoiseRule::Uniform(x) => (x, true, None),
        NoiseRule::SubjectStd(k) => {
            let std = embedding_std(model, tok, subjects)?;
            (k * std, false, Some(std))
        }
    };
    opts.noise_level = level;
    opts.uniform = uniform;
    Ok(std)
}

/// Checks that every fact's subject is in its prompt, before any is traced.
pub fn check_facts(tok: &Tokenizer, facts: &[Fact]) -> Result<()> {
    for (i, f) in facts.iter().enumerate() {
        super::facts::subject_tokens(tok, &f.prompt, &f.subject).map_err(|e| e.context(format!("fact {i}")))?;
    }
    Ok(())
}

/// Traces every fact for every kind in `kinds`, facts side by side when the thread plan runs a
/// small model's operations on one thread. `each(index, fact, traces)` sees every fact's traces
/// in fact order, as soon as its group is done (to print or draw them); its error stops the run.
pub fn trace_facts<E: From<Error>>(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    facts: &[Fact],
    kinds: &[Kind],
    opts: &TraceOptions,
    mut each: impl FnMut(usize, &Fact, &[FactTrace]) -> std::result::Result<(), E>,
) -> std::result::Result<Vec<FactTrace>, E> {
    let workers = crate::threads::request_workers().max(1);
    let group = workers * 4;
    let mut all = Vec::new();
    for (c, chunk) in facts.chunks(group).enumerate() {
        let traced = crate::threads::map_parallel(chunk.len(), workers, |i| -> Result<Vec<FactTrace>> {
            let p = prepare(model, tok, &chunk[i], opts, kinds)?;
            kinds.iter().map(|&k| trace_kind(model, &p, k, opts)).collect()
        })
        .map_err(|e| E::from(e.context("causal tracing failed")))?;
        for (i, traces) in traced.into_iter().enumerate() {
            each(c * group + i, &chunk[i], &traces)?;
            all.extend(traces);
        }
    }
    Ok(all)
}
