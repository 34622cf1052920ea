//! `edit predict`: next-token distribution for each prompt.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use edit::{Batch, Logits, TraceSpec};
use serde::Serialize;

use super::{ComputeArgs, GlobalArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// How many candidates to show per prompt.
    #[arg(short = 'k', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// One JSON object per prompt on stdout: {"prompt", "input_ids", "top": [{"id", "token", "logprob"}]}.
    #[arg(long)]
    pub json: bool,
    /// Prompts run together in one forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// The prompts (each is tokenized as is, without special tokens).
    #[arg(required = true, value_name = "PROMPT")]
    pub prompts: Vec<String>,
}

#[derive(Serialize)]
struct Candidate {
    id: u32,
    token: String,
    logprob: f32,
}

#[derive(Serialize)]
struct Prediction<'a> {
    prompt: &'a str,
    input_ids: Vec<u32>,
    top: Vec<Candidate>,
}

pub fn run(args: PredictArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let lm = args.model.load(&args.compute, global)?;
    let tok = lm.tokenizer()?;
    let n_ctx = lm.config().n_ctx;
    // Validate every prompt before running any of them.
    let mut encoded = Vec::with_capacity(args.prompts.len());
    for (i, p) in args.prompts.iter().enumerate() {
        let ids = tok.encode_input(p)?;
        if ids.is_empty() {
            bail!("prompt {} is empty: give at least one token of text", i + 1);
        }
        if ids.len() > n_ctx {
            bail!("prompt {} has {} tokens, more than the model's context of {n_ctx}", i + 1, ids.len());
        }
        encoded.push(ids);
    }
    let k = (args.top_k as usize).min(lm.config().vocab_size);
    let mut out = std::io::stdout().lock();
    for (chunk_idx, chunk) in encoded.chunks(args.batch_size as usize).enumerate() {
        let batch = Batch::from_sequences(chunk, lm.pad_id(), lm.model.device())?;
        let trace = lm.model.forward(&batch, &TraceSpec::logits(Logits::Last), &[])?;
        let logits = trace.logits.context("model returned no logits")?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(candle_core::DType::F32)?, 1)?;
        let rows: Vec<Vec<f32>> = logp.to_vec2()?;
        for (j, row) in rows.iter().enumerate() {
            let idx = chunk_idx * args.batch_size as usize + j;
            let top =
                top_k(row, k).into_iter().map(|(id, logprob)| Ok(Candidate { id, token: tok.decode(&[id])?, logprob })).collect::<anyhow::Result<Vec<_>>>()?;
            let pred = Prediction { prompt: &args.prompts[idx], input_ids: encoded[idx].clone(), top };
            if args.json {
                serde_json::to_writer(&mut out, &pred)?;
                writeln!(out)?;
            } else {
                print_table(&mut out, &pred)?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Indices of the k largest values, highest first (ties: lower id first).
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

fn print_table(out: &mut impl Write, p: &Prediction) -> std::io::Result<()> {
    writeln!(out, "{:?} ({} tokens)", p.prompt, p.input_ids.len())?;
    writeln!(out, "  {:>4}  {:>7}  {:>9}  {:>7}  token", "rank", "id", "logprob", "prob")?;
    for (r, c) in p.top.iter().enumerate() {
        writeln!(out, "  {:>4}  {:>7}  {:>9.4}  {:>7.4}  {:?}", r + 1, c.id, c.logprob, c.logprob.exp(), c.token)?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_orders_and_breaks_ties_by_id() {
        let row = [0.1, 0.5, 0.5, -1.0, 0.3];
        assert_eq!(super::top_k(&row, 3), vec![(1, 0.5), (2, 0.5), (4, 0.3)]);
        assert_eq!(super::top_k(&row, 10).len(), 5);
    }
}
