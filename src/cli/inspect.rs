//! `edit inspect`: what a model is and which modules an edit can target. Reads the config
//! and the safetensors headers only, so it is instant even for 20B-parameter checkpoints.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use edit::checkpoint::Checkpoint;
use edit::hub::ModelOrigin;
use edit::models::modules::{editable_modules, EditableModule};
use edit::ModelConfig;
use serde::Serialize;

use super::{GlobalArgs, ModelArgs};

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    origin: &'a ModelOrigin,
    family: &'static str,
    model_type: &'a str,
    layers: usize,
    d_model: usize,
    d_ff: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    context: usize,
    storage_dtype: Option<String>,
    activation: edit::config::Activation,
    rotary: Option<edit::config::Rotary>,
    parallel_residual: bool,
    tied_embeddings: bool,
    /// The Llama-style families' settings (norms, biases, windows, soft-capping, local RoPE).
    #[serde(skip_serializing_if = "Option::is_none")]
    decoder: Option<&'a edit::config::DecoderConfig>,
    parameters: usize,
    weight_files: usize,
    editable_modules: Vec<ModuleReport>,
}

#[derive(Serialize)]
struct ModuleReport {
    #[serde(flatten)]
    module: EditableModule,
    stored_shape: [usize; 2],
}

pub fn run(args: InspectArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let files = args.model.resolve(global)?;
    let cfg = ModelConfig::from_file(&files.config)?;
    let ckpt = Checkpoint::open_files(files.weights.clone())?;
    let modules: Vec<ModuleReport> = editable_modules(&cfg).into_iter().map(|m| ModuleReport { stored_shape: m.stored_shape(), module: m }).collect();
    // Fail like `predict` would if the checkpoint lacks a module an edit could target.
    for m in &modules {
        let name = format!("{}.weight", m.module.name);
        let info = ckpt.resolve(&name, cfg.family.prefix()).map(|k| &ckpt.tensors()[k]).ok_or_else(|| edit::Error::MissingTensor {
            name: name.clone(),
            files: files.weights.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        })?;
        if info.shape != m.stored_shape {
            return Err(edit::Error::ShapeMismatch {
                name,
                file: files.weights[info.file].display().to_string(),
                expected: m.stored_shape.to_vec(),
                found: info.shape.clone(),
            }
            .into());
        }
    }
    let report = Report {
        origin: &files.origin,
        family: cfg.family.name(),
        model_type: &cfg.model_type,
        layers: cfg.n_layer,
        d_model: cfg.d_model,
        d_ff: cfg.d_ff,
        heads: cfg.n_head,
        kv_heads: cfg.n_kv_head,
        head_dim: cfg.head_dim(),
        vocab_size: cfg.vocab_size,
        context: cfg.n_ctx,
        storage_dtype: ckpt.storage_dtype().map(|d| format!("{d:?}").to_ascii_lowercase()),
        activation: cfg.activation,
        rotary: cfg.rotary,
        parallel_residual: cfg.parallel_residual,
        tied_embeddings: cfg.tie_word_embeddings,
        decoder: cfg.decoder.as_ref(),
        parameters: ckpt.tensors().values().map(|t| t.shape.iter().product::<usize>()).sum(),
        weight_files: files.weights.len(),
        editable_modules: modules,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let origin = match r.origin {
        ModelOrigin::Local { path } => path.display().to_string(),
        ModelOrigin::Hub { repo, revision, commit } => {
            format!("{repo} @ {revision}{}", commit.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())
        }
    };
    writeln!(out, "model          {origin}")?;
    writeln!(out, "family         {} ({})", r.family, r.model_type)?;
    writeln!(out, "layers         {}", r.layers)?;
    writeln!(out, "d_model        {}  (heads {} x {})", r.d_model, r.heads, r.head_dim)?;
    if r.kv_heads != r.heads {
        writeln!(out, "kv heads       {}  (grouped-query attention: {} query heads share each)", r.kv_heads, r.heads / r.kv_heads.max(1))?;
    }
    writeln!(out, "d_ff           {}  (key width of ROME/MEMIT)", r.d_ff)?;
    writeln!(out, "vocab          {}", r.vocab_size)?;
    writeln!(out, "context        {}", r.context)?;
    writeln!(out, "parameters     {}", r.parameters)?;
    writeln!(out, "dtype          {} (stored)", r.storage_dtype.as_deref().unwrap_or("?"))?;
    writeln!(out, "activation     {}", word(&r.activation))?;
    match &r.rotary {
        Some(rot) => {
            writeln!(out, "rotary         {} of {} dims per head, base {}, {:?}{}", rot.dims, r.head_dim, rot.base, word(&rot.style), scaling(&rot.scaling))?
        }
        None => writeln!(out, "rotary         none (learned positions)")?,
    }
    if let Some(d) = r.decoder {
        print_decoder(out, d)?;
    } else {
        writeln!(out, "residual       {}", if r.parallel_residual { "parallel" } else { "sequential" })?;
    }
    writeln!(out, "tied head      {}", r.tied_embeddings)?;
    writeln!(out, "\neditable modules (stored shape, layout):")?;
    for m in &r.editable_modules {
        writeln!(out, "  {:<48} {:?} {}", m.module.name, m.stored_shape, word(&m.module.layout))?;
    }
    Ok(())
}

fn scaling(s: &edit::config::RopeScaling) -> String {
    use edit::config::RopeScaling as S;
    match s {
        S::None => String::new(),
        S::Linear { factor } => format!(", linear scaling x{factor}"),
        S::Dynamic { factor, max_position_embeddings } => format!(", dynamic NTK scaling x{factor} beyond {max_position_embeddings}"),
        S::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            format!(", llama3 scaling x{factor} (low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})")
        }
    }
}

fn print_decoder(out: &mut impl Write, d: &edit::config::DecoderConfig) -> std::io::Result<()> {
    use edit::config::{AttentionKind, NormStyle};
    let norm = match d.norm {
        NormStyle::Scale => "RMSNorm (x̂·w)",
        NormStyle::OnePlus => "RMSNorm (x̂·(1+w)), also after attention and MLP",
    };
    writeln!(out, "norm           {norm}{}", if d.qk_norm { "; per-head q/k norms" } else { "" })?;
    let biases: Vec<&str> = [(d.qkv_bias, "q/k/v"), (d.o_bias, "o"), (d.mlp_bias, "mlp")].iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
    writeln!(out, "biases         {}", if biases.is_empty() { "none".to_string() } else { biases.join(", ") })?;
    let sliding = d.layer_kinds.iter().filter(|k| **k == AttentionKind::Sliding).count();
    match d.sliding_window {
        Some(w) if sliding > 0 => writeln!(out, "attention      sliding window {w} on {sliding} of {} layers", d.layer_kinds.len())?,
        _ => writeln!(out, "attention      full (no sliding window)")?,
    }
    if let Some(l) = &d.local_rotary {
        writeln!(out, "local rotary   base {}{} on the sliding layers", l.base, scaling(&l.scaling))?;
    }
    if d.attn_softcap.is_some() || d.final_softcap.is_some() {
        writeln!(out, "soft-capping   attention {:?}, logits {:?}", d.attn_softcap, d.final_softcap)?;
    }
    Ok(())
}

/// The JSON spelling of an enum value (`gelu_tanh`, `in_out`), so text and JSON share one vocabulary.
fn word(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}
