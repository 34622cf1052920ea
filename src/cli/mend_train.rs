//! `edit mend train`: the options become a plan (data read and split, config resolved, outputs
//! checked) before the model is loaded; then the loop with its checkpoints, and the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use edit::editing::mend::data::{locality_sequences, record_examples, sample_texts, sampled_examples, SampledText};
use edit::editing::mend::hypernet;
use edit::editing::mend::train::{TrainData, Trainer, Validation};
use edit::eval::records::parse_dataset;
use edit::identity::ModelIdentity;
use edit::tokenizer::Tokenizer;
use edit::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::eval::zsre_target;
use super::mend::{SampleArgs, TrainArgs};
use super::{interrupt, logging, GlobalArgs};

/// `items` split into (train, held out): the last `fraction` (at least one) held out.
fn split<T>(mut items: Vec<T>, fraction: f64, what: &str) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    let n = items.len();
    let held = ((n as f64 * fraction).ceil() as usize).max(1);
    if n < 2 || held >= n {
        bail!("{what}: {n} item(s) cannot be split into training and validation (--val-fraction {fraction}); give more");
    }
    let val = items.split_off(n - held);
    Ok((items, val))
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
    let neighbours = args.locality == "neighbors";
    let edits_text = std::fs::read_to_string(&args.edits).with_context(|| format!("cannot read {}", args.edits.display()))?;
    let (examples, layout) = match sampled_texts(&edits_text, &args.edits)? {
        Some(texts) => {
            if neighbours {
                bail!(
                    "--locality neighbors needs edit records with neighbourhood prompts; {} holds sampled texts: give --locality FILE or embedded",
                    args.edits.display()
                );
            }
            (sampled_examples(&tok, &texts)?, "self-sampled texts")
        }
        None => {
            let source = args.edits.display().to_string();
            let dataset =
                parse_dataset(&edits_text, &source, zsre_target(&args.zsre_target)).with_context(|| format!("cannot read the edit records in {source}"))?;
            dataset.check(&tok, cfg.n_ctx, &args.edits.display().to_string())?;
            (record_examples(&tok, &dataset.records, neighbours)?, dataset.format.describe())
        }
    };
    if let Some(long) = examples.iter().position(|e| e.inner.ids.len() > cfg.n_ctx) {
        bail!("{}: edit {long} has more tokens than the model's context ({})", args.edits.display(), cfg.n_ctx);
    }
    let (train, val) = split(examples, args.val_fraction, &args.edits.display().to_string())?;
    let (loc_train, loc_val) = if neighbours {
        (Vec::new(), Vec::new())
    } else {
        let loc = locality_sequences(&tok, &texts_of(&args.locality)?, hp.train.loc_max_tokens.min(cfg.n_ctx))?;
        split(loc, args.val_fraction, &format!("--locality {}", args.locality))?
    };
    let loc_digest = match args.locality.as_str() {
        "neighbors" | "embedded" => args.locality.clone(),
        file => edit::digest::file_sha256(Path::new(file))?,
    };
    tracing::info!(
        "{} training / {} validation records ({layout}), {} / {} locality texts; inner weights {}",
        train.len(),
        val.len(),
        loc_train.len(),
        loc_val.len(),
        names.join(", ")
    );
    let data = TrainData { train, val, loc_train, loc_val };
    let identity = ModelIdentity::of(&files)?;
    let config_json = serde_json::to_value(&hp)?;
    // What a checkpoint must match to be resumed: the model, the config, the data and its split.
    let fingerprint = edit::checkpoint::hex(&{
        use sha2::Digest;
        let key = json!({
            "weights": identity.weights_fingerprint,
            "config": config_json,
            "inner_params": names,
            "edits": edit::checkpoint::hex(&sha2::Sha256::digest(edits_text.as_bytes())),
            "zsre_target": args.zsre_target,
            "locality": loc_digest,
            "val_fraction": args.val_fraction,
        });
        sha2::Sha256::digest(key.to_string().as_bytes()).to_vec()
    });

    let lm = args.model.load_files(files, &args.compute)?;
    let mut trainer = Trainer::new(&*lm.model, &names, hp.train.clone(), lm.pad_id())?;
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
        let loss = trainer.step(&data)?;
        if step.is_multiple_of(val_interval) {
            let v = trainer.validate(&data)?;
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
        let v = trainer.validate(&data)?;
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
        serde_json::to_writer(&mut out, &json!({"out": args.out, "history": h, "best": best, "config": config_json}))?;
        writeln!(out)?;
    } else {
        let best = best.map(describe).unwrap_or_default();
        writeln!(out, "wrote {}: {} steps; the best validation, kept: {best}", args.out.display(), h.step)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `edit mend sample`'s texts, when `text` (read from `path`) holds them (JSON Lines whose first
/// record has `n_tokens`); `None` for edit records.
fn sampled_texts(text: &str, path: &Path) -> anyhow::Result<Option<Vec<SampledText>>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    let first = lines.peek().and_then(|(_, l)| serde_json::from_str::<serde_json::Value>(l).ok());
    if first.is_none_or(|v| v.get("n_tokens").is_none()) {
        return Ok(None);
    }
    let texts = lines
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}: not a sampled text {{\"text\", \"n_tokens\"}}", path.display(), i + 1)))
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(texts))
}

/// Locality or prefix texts: a file, or the embedded WikiText-2 test split.
fn texts_of(arg: &str) -> anyhow::Result<Vec<String>> {
    Ok(match arg {
        "embedded" => edit::data::EMBEDDED_WIKITEXT.lines().map(str::to_string).collect(),
        file => edit::data::read_texts(Path::new(file)).with_context(|| format!("cannot read the texts {file}"))?,
    })
}

pub fn sample(args: SampleArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    edit::fsutil::check_file_target(&args.out, args.force, "--out")?;
    if args.n_tokens == 0 || args.prefix_tokens == 0 {
        bail!("--n-tokens and --prefix-tokens must be at least 1");
    }
    let texts = texts_of(&args.texts)?;
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
