//! The fine-tuning methods' objectives (reference spec §4.1), differentiable with respect to
//! whichever parameters are `Var`s.
//!
//! - **prompt_last** (kmeng01/rome and kmeng01/memit FT, "FT-L" in EasyEdit): right-padded
//!   prompts; the log-softmax at each prompt's last token; *every* target token scored at that
//!   one position (a bag of tokens, exact only for single-token targets); target ids equal to
//!   the unk token (`<|endoftext|>`, which is also the pad) masked out; per row the sum over its
//!   target tokens divided by their count; the mean over rows.
//! - **target_new** (EasyEdit's FT-M): teacher-forced cross-entropy over the target tokens
//!   appended to the prompt (prompt tokens, then target tokens, right-padded); per row the mean
//!   over its target tokens; the mean over rows.

use candle_core::{DType, Tensor};

use crate::editing::optimize::log_softmax;
use crate::error::{Error, Result};
use crate::models::{Batch, CausalLm, ForwardOpts, Logits, NoHooks};
use crate::tokenizer::Tokenizer;

/// Which objective a fine-tuning run optimises (`objective_optimization` in EasyEdit's files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    PromptLast,
    TargetNew,
}

/// Token sequences, one per prompt or target.
type Sequences = Vec<Vec<u32>>;

/// Each prompt's model input and its target's tokens as they follow it (see [`Tokenizer`]; the
/// reference tokenizes the target alone, which with a BOS tokenizer puts the BOS in the target).
fn encode_all(tok: &Tokenizer, texts: &[String], targets: &[String]) -> Result<(Sequences, Sequences)> {
    let mut prompts = Vec::with_capacity(texts.len());
    let mut goals = Vec::with_capacity(texts.len());
    for (t, target) in texts.iter().zip(targets) {
        let ids = tok.encode_input(t)?;
        if ids.is_empty() {
            return Err(Error::Input(format!("the prompt {t:?} has no tokens")));
        }
        let goal = tok.continuation(t, target)?;
        if goal.is_empty() {
            return Err(Error::Input(format!("the target {target:?} has no tokens")));
        }
        prompts.push(ids);
        goals.push(goal);
    }
    Ok((prompts, goals))
}

/// The loss of `objective` for prompts `texts` (subjects filled in) and `targets` (with their
/// leading space), as a scalar tensor on the model's device. `unk_id` is masked out of the
/// prompt_last targets, as the reference does.
pub fn ft_loss(model: &dyn CausalLm, tok: &Tokenizer, texts: &[String], targets: &[String], objective: Objective, unk_id: Option<u32>) -> Result<Tensor> {
    let pad_id = model.config().pad_id();
    if texts.len() != targets.len() || texts.is_empty() {
        return Err(Error::Input(format!("{} prompts but {} targets", texts.len(), targets.len())));
    }
    let (prompts, goals) = encode_all(tok, texts, targets)?;
    let device = model.device();
    match objective {
        Objective::PromptLast => {
            let batch = Batch::from_sequences(&prompts, pad_id, device)?;
            let opts = ForwardOpts { logits: Logits::Last, differentiable: true, ..ForwardOpts::default() };
            let logits = model.forward_hooked(&batch, &opts, &mut NoHooks)?.expect("logits");
            let lp = log_softmax(&logits.to_dtype(DType::F32)?)?;
            per_row_mean(&lp, &goals, unk_id, |r, _| r)
        }
        Objective::TargetNew => {
            let rows: Vec<Vec<u32>> = prompts.iter().zip(&goals).map(|(p, t)| p.iter().chain(t).copied().collect()).collect();
            let batch = Batch::from_sequences(&rows, pad_id, device)?;
            // Target token j of row r is predicted at position len(prompt) - 1 + j.
            let positions: Vec<(usize, usize)> =
                prompts.iter().zip(&goals).enumerate().flat_map(|(r, (p, t))| (0..t.len()).map(move |j| (r, p.len() - 1 + j))).collect();
            let opts = ForwardOpts { logits: Logits::At(positions.clone()), differentiable: true, ..ForwardOpts::default() };
            let logits = model.forward_hooked(&batch, &opts, &mut NoHooks)?.expect("logits");
            let lp = log_softmax(&logits.to_dtype(DType::F32)?)?;
            // Row i of `lp` is the i-th (row, position) pair: request r's j-th target token.
            let starts: Vec<usize> = goals
                .iter()
                .scan(0, |acc, t| {
                    let s = *acc;
                    *acc += t.len();
                    Some(s)
                })
                .collect();
            per_row_mean(&lp, &goals, None, |r, j| starts[r] + j)
        }
    }
}

/// −mean over rows r of the mean over r's target ids t_j (those equal to `unk_id` left out) of
/// logp[row_of(r, j), t_j].
fn per_row_mean(lp: &Tensor, goals: &[Vec<u32>], unk_id: Option<u32>, row_of: impl Fn(usize, usize) -> usize) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(goals.len());
    for (r, goal) in goals.iter().enumerate() {
        let picked: Vec<(usize, u32)> = goal.iter().enumerate().filter(|&(_, &t)| Some(t) != unk_id).map(|(j, &t)| (row_of(r, j), t)).collect();
        if picked.is_empty() {
            return Err(Error::Input(format!("target {r} has no scorable tokens (only the unk token)")));
        }
        let terms: Vec<Tensor> = picked.iter().map(|&(i, t)| lp.get(i)?.get(t as usize)).collect::<candle_core::Result<_>>()?;
        rows.push((Tensor::stack(&terms, 0)?.sum_all()? / picked.len() as f64)?);
    }
    Ok((Tensor::stack(&rows, 0)?.mean_all()? * -1.0)?)
}
