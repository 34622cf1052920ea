//! `edit mend train`: the options become a plan (data read and split, config resolved, outputs
//! checked) before the model is loaded; then the loop with its checkpoints, and the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use edit::editing::mend::data::sample_texts;
use edit::editing::mend::hypernet;
use edit::editing::mend::plan::{LocalitySource, TrainingSet};
use edit::editing::mend::train::{Trainer, Validation};
use edit::editing::records::ZsreTarget;
use edit::identity::ModelIdentity;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::args::{named, Locality, MendConfigArgs, Texts};
use super::{interrupt, logging, GlobalArgs, ModelArgs};

/// Train a MEND hypernetwork for a model (the objective and optimiser of eric-mitchell/mend).
///
/// Per step: an edit record (its rewrite prompt + target_new is the edit, a paraphrase the
/// text it must carry over to) and a locality text; loss = cedit·NLL(paraphrase | edited) +
/// cloc·KL(base ‖ edited) on the locality text; Adam on the hypernetwork and its step sizes,
/// gradients summed over `accumulate_bs` steps and clipped. The last --val-fraction of the
/// records and texts are held out for validation every `val_interval` steps; the best validated
/// hypernetwork is the result. Hyperparameters: the reference's (lr 1e-6, ...; `--config`, `--set`).
///
/// A checkpoint (OUT.ckpt) is written every --checkpoint-every steps and on Ctrl-C; running the
/// same command again resumes from it exactly. OUT is written atomically at the end.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: super::ComputeArgs,
    /// Edit records: CounterFact, zsRE or request objects (the layouts `edit eval` reads), or
    /// self-sampled texts written by `edit mend sample` (JSON Lines with `n_tokens`).
    #[arg(long, value_name = "FILE")]
    pub edits: PathBuf,
    /// Locality texts (.txt one per line, .jsonl `text`, .parquet); `embedded` (the WikiText-2
    /// test split compiled into edit); or `neighbors`: each record's own neighbourhood prompts
    /// with its true object (CounterFact; zsRE's NQ question), as EasyEdit trains on CounterFact.
    #[arg(long, value_name = "FILE|embedded|neighbors", value_parser = Locality::parse)]
    pub locality: Locality,
    /// Where to write the hypernetwork (safetensors).
    #[arg(short, long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Replace --out if it exists (a checkpoint of the same run is still resumed).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub hparams: MendConfigArgs,
    /// Stop after this many steps [default: the config's `max_iters`].
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// The share of records and of locality texts held out for validation (the last ones).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Write the checkpoint every this many steps [default: the config's `val_interval`].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Seed of the initial weights and the draws [default: the config's `seed`].
    #[arg(long)]
    pub seed: Option<u64>,
    /// zsRE records: learn `answers[0]` (the reference) or `alt` (EasyEdit).
    #[arg(long, default_value = "answers", value_parser = named(&ZsreTarget::ALL, ZsreTarget::name))]
    pub zsre_target: ZsreTarget,
    /// Draw the validation curves (edit success, locality accuracy) to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Print the run's history (every step's losses and every validation) as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

/// Write self-sampled edit texts (MEND's "gen" training data, whose download is gone): prefixes
/// of texts continued by the model itself, for `edit mend train --edits FILE.jsonl`.
///
/// Each output line is {"text": prefix + continuation, "n_tokens": N}: the edit learns the last
/// N tokens, and its equivalents are the text with up to half its other tokens cut from the left.
#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub compute: super::ComputeArgs,
    /// Texts whose prefixes are continued (.txt, .jsonl `text`, .parquet), or `embedded`.
    #[arg(long, value_name = "FILE|embedded", value_parser = Texts::parse)]
    pub texts: Texts,
    /// Where to write the JSON Lines.
    #[arg(short, long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// How many texts to write.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub count: usize,
    /// Tokens of each prefix (shorter texts are used whole).
    #[arg(long, default_value_t = 32)]
    pub prefix_tokens: usize,
    /// Tokens sampled after each prefix (the reference's data: 10, or 1).
    #[arg(long, default_value_t = 10)]
    pub n_tokens: usize,
    /// Seed of the prefixes' choice and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn describe(v: &Validation) -> String {
    format!(
        "step {}: edit success {:.1}%, locality accuracy {:.1}% → {:.1}% (drawdown {:.2}), validation loss {:.4}",
        v.step,
        100.0 * v.edit_acc,
        100.0 * v.loc_acc_pre,
        100.0 * v.loc_acc_post,
        100.0 * v.drawdown,
        v.total_edit
    )
}

/// The checkpoint next to the output: `OUT.ckpt`.
fn checkpoint_path(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ckpt", out.display()))
}

pub fn train(args: TrainArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    edit::fsutil::check_file_target(&args.out, args.force, "--out")?;
    if let Some(p) = &args.plot {
        edit::eval::plot::check_path(p)?;
    }
    if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
        bail!("--val-fraction {} must be between 0 and 1 (exclusive)", args.val_fraction);
    }
    args.compute.parse()?;
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let tok: Tokenizer = edit::model::load_tokenizer(&files)?.ok_or_else(|| edit::model::no_tokenizer(&files))?;
    let mut hp = args.hparams.resolve(&cfg, args.model.id())?;
    if let Some(n) = args.max_steps {
        hp.train.max_iters = n;
    }
    if let Some(s) = args.seed {
        hp.train.seed = s;
    }
    let every = args.checkpoint_every.unwrap_or(hp.train.val_interval).max(1);
    let names = hp.inner_params(&cfg);

    // The data, read and checked before any weights are.
    let locality = match &args.locality {
        Locality::Neighbors => LocalitySource::Neighbors,
        Locality::Texts(t) => LocalitySource::Texts {
            texts: t.read()?,
            key: match t {
                Texts::File(file) => edit::digest::file_sha256(file)?,
                Texts::Embedded => t.describe(),
            },
            shown: t.describe(),
        },
    };
    let set = TrainingSet::read(&tok, &cfg, &hp, &args.edits, args.zsre_target, locality, args.val_fraction)?;
    let data = &set.data;
    tracing::info!(
        "{} training / {} validation records ({}), {} / {} locality texts; inner weights {}",
        data.train.len(),
        data.val.len(),
        set.layout,
        data.loc_train.len(),
        data.loc_val.len(),
        names.join(", ")
    );
    let identity = ModelIdentity::of(&files)?;
    let fingerprint = set.checkpoint_key(&identity, &hp, &names);

    let lm = args.model.load_files(files, &args.compute)?;
    let mut trainer = Trainer::new(&*lm.model, &names, hp.train.clone())?;
    let ckpt = checkpoint_path(&args.out);
    if ckpt.exists() {
        trainer.load_checkpoint(&ckpt, &fingerprint).with_context(|| format!("cannot resume from {}; delete it to start over", ckpt.display()))?;
        tracing::info!("resuming from {} at step {}", ckpt.display(), trainer.history.step);
    }
    let max = hp.train.max_iters as u64;
    let bar = if logging::show_progress(global) { ProgressBar::new(max) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, {msg}, ETA {eta}").expect("valid template"));
    bar.set_position(trainer.history.step);
    let _collecting = interrupt::Collecting::start();
    let val_interval = hp.train.val_interval as u64;
    let mut last_es = None;
    while !trainer.done() {
        let step = trainer.history.step;
        let loss = trainer.step(data)?;
        if step.is_multiple_of(val_interval) {
            let v = trainer.validate(data)?;
            tracing::info!("{}", describe(&v));
            last_es = Some(v.edit_acc);
        }
        bar.inc(1);
        let es = last_es.map(|e| format!(", validation edit success {:.0}%", 100.0 * e)).unwrap_or_default();
        bar.set_message(format!("loss {:.3}{es}", loss.total));
        let taken = trainer.history.step;
        if interrupt::requested() {
            trainer.save_checkpoint(&ckpt, &fingerprint)?;
            bar.abandon();
            return Err(edit::Error::Interrupted(format!(
                "training stopped at step {taken}; the checkpoint {} holds it: run the same command again to resume",
                ckpt.display()
            ))
            .into());
        }
        if taken.is_multiple_of(every as u64) {
            trainer.save_checkpoint(&ckpt, &fingerprint)?;
        }
    }
    bar.finish_and_clear();
    if trainer.history.stopped_early {
        tracing::info!("no validation improvement for {} steps: stopped", hp.train.early_stop_patience);
    }
    // The last weights are validated too, so that the result can be the run's end.
    if trainer.history.validations.last().is_none_or(|v| v.step != trainer.history.step) {
        let v = trainer.validate(data)?;
        tracing::info!("{}", describe(&v));
    }
    let origin = format!("trained by edit mend train on {} ({} steps)", args.edits.display(), trainer.history.step);
    let (meta, tensors) = trainer.result(Some(identity), origin)?;
    hypernet::write(&args.out, &meta, &tensors).with_context(|| format!("cannot write {}", args.out.display()))?;
    let _ = std::fs::remove_file(&ckpt);
    let h = &trainer.history;
    if let Some(p) = &args.plot {
        let pts = |f: fn(&Validation) -> f64| h.validations.iter().map(|v| (v.step as f64, 100.0 * f(v))).collect::<Vec<_>>();
        let series = vec![
            ("edit success (validation)".to_string(), pts(|v| v.edit_acc)),
            ("locality accuracy before".to_string(), pts(|v| v.loc_acc_pre)),
            ("locality accuracy after".to_string(), pts(|v| v.loc_acc_post)),
        ];
        edit::eval::plot::write_plot(p, "MEND training", "step", &series)?;
    }
    let best = h.best.and_then(|(s, _)| h.validations.iter().find(|v| v.step == s));
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &json!({"out": args.out, "history": h, "best": best, "config": serde_json::to_value(&hp)?}))?;
        writeln!(out)?;
    } else {
        let best = best.map(describe).unwrap_or_default();
        writeln!(out, "wrote {}: {} steps; the best validation, kept: {best}", args.out.display(), h.step)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Locality or prefix texts: a file, or the embedded WikiText-2 test split.
pub fn sample(args: SampleArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    edit::fsutil::check_file_target(&args.out, args.force, "--out")?;
    if args.n_tokens == 0 || args.prefix_tokens == 0 {
        bail!("--n-tokens and --prefix-tokens must be at least 1");
    }
    let texts = args.texts.read()?;
    let lm = args.model.load(&args.compute, global)?;
    let tok = lm.tokenizer.as_ref().ok_or_else(|| edit::model::no_tokenizer(&lm.files))?;
    let prefix = args.prefix_tokens.min(lm.config().n_ctx.saturating_sub(args.n_tokens)).max(1);
    let sampled = sample_texts(&*lm.model, tok, &texts, args.count, prefix, args.n_tokens, args.seed)?;
    let mut body = String::new();
    for s in &sampled {
        body.push_str(&serde_json::to_string(s)?);
        body.push('\n');
    }
    edit::fsutil::write_atomic(&args.out, body.as_bytes())?;
    writeln!(std::io::stdout().lock(), "wrote {}: {} texts of {} sampled tokens", args.out.display(), sampled.len(), args.n_tokens)?;
    Ok(ExitCode::SUCCESS)
}
