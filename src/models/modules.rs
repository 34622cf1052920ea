//! The one place that knows each family's module names and weight orientation.
//!
//! Editing methods address weights by the reference's dotted module names
//! (`transformer.h.17.mlp.c_proj`, `gpt_neox.layers.5.mlp.dense_4h_to_h`), read them in a
//! canonical `[out, in]` orientation and write deltas back through [`EditableModule`].

use candle_core::Tensor;
use serde::Serialize;

use super::layers::Orientation;
pub use super::layers::Orientation as WeightLayout;
use crate::config::{Family, ModelConfig};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// Fused query/key/value projection (GPT-2 `c_attn`, NeoX `query_key_value`).
    AttnQkv,
    AttnQ,
    AttnK,
    AttnV,
    /// Attention output projection.
    AttnOut,
    /// The gate of a gated MLP (`gate_proj`: `down(act(gate(x)) ⊙ up(x))`).
    MlpGate,
    /// MLP up-projection (`c_fc`, `fc_in`, `dense_h_to_4h`, `up_proj`).
    MlpUp,
    /// MLP down-projection, whose input is the ROME/MEMIT key (`c_proj`, `fc_out`, `dense_4h_to_h`,
    /// `down_proj`).
    MlpDown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EditableModule {
    /// The reference's dotted module name.
    pub name: String,
    pub layer: usize,
    pub kind: ModuleKind,
    /// How the checkpoint stores the weight.
    pub layout: Orientation,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl EditableModule {
    /// The weight's stored shape.
    pub fn stored_shape(&self) -> [usize; 2] {
        match self.layout {
            Orientation::InOut => [self.in_dim, self.out_dim],
            Orientation::OutIn => [self.out_dim, self.in_dim],
        }
    }

    /// Converts a stored weight (or delta) to `[out, in]`.
    pub fn to_out_in(&self, stored: &Tensor) -> Result<Tensor> {
        Ok(match self.layout {
            Orientation::InOut => stored.t()?.contiguous()?,
            Orientation::OutIn => stored.clone(),
        })
    }

    /// Converts an `[out, in]` weight (or delta) to the stored layout.
    pub fn from_out_in(&self, w: &Tensor) -> Result<Tensor> {
        Ok(match self.layout {
            Orientation::InOut => w.t()?.contiguous()?,
            Orientation::OutIn => w.clone(),
        })
    }
}

fn suffixes(family: Family) -> &'static [(&'static str, ModuleKind)] {
    use ModuleKind::*;
    match family {
        Family::Gpt2 => &[("attn.c_attn", AttnQkv), ("attn.c_proj", AttnOut), ("mlp.c_fc", MlpUp), ("mlp.c_proj", MlpDown)],
        Family::GptJ => {
            &[("attn.q_proj", AttnQ), ("attn.k_proj", AttnK), ("attn.v_proj", AttnV), ("attn.out_proj", AttnOut), ("mlp.fc_in", MlpUp), ("mlp.fc_out", MlpDown)]
        }
        Family::GptNeoX => {
            &[("attention.query_key_value", AttnQkv), ("attention.dense", AttnOut), ("mlp.dense_h_to_4h", MlpUp), ("mlp.dense_4h_to_h", MlpDown)]
        }
        _ => &[
            ("self_attn.q_proj", AttnQ),
            ("self_attn.k_proj", AttnK),
            ("self_attn.v_proj", AttnV),
            ("self_attn.o_proj", AttnOut),
            ("mlp.gate_proj", MlpGate),
            ("mlp.up_proj", MlpUp),
            ("mlp.down_proj", MlpDown),
        ],
    }
}

/// `transformer.h` / `gpt_neox.layers` / `model.layers`: the block list's module name.
pub fn layers_name(family: Family) -> &'static str {
    match family {
        Family::Gpt2 | Family::GptJ => "transformer.h",
        Family::GptNeoX => "gpt_neox.layers",
        _ => "model.layers",
    }
}

/// (in, out) of a linear module (grouped-query attention: keys and values have `kv_dim` outputs).
fn dims(cfg: &ModelConfig, kind: ModuleKind) -> (usize, usize) {
    let d = cfg.d_model;
    match kind {
        ModuleKind::AttnQkv => (d, 3 * d),
        ModuleKind::AttnQ => (d, cfg.q_dim()),
        ModuleKind::AttnK | ModuleKind::AttnV => (d, cfg.kv_dim()),
        ModuleKind::AttnOut => (cfg.q_dim(), d),
        ModuleKind::MlpGate | ModuleKind::MlpUp => (d, cfg.d_ff),
        ModuleKind::MlpDown => (cfg.d_ff, d),
    }
}

fn layout(family: Family) -> Orientation {
    match family {
        Family::Gpt2 => Orientation::InOut,
        _ => Orientation::OutIn,
    }
}

pub fn module(cfg: &ModelConfig, layer: usize, kind: ModuleKind) -> Result<EditableModule> {
    if layer >= cfg.n_layer {
        return Err(Error::Input(format!("layer {layer} does not exist: the model has {} layers (0-{})", cfg.n_layer, cfg.n_layer - 1)));
    }
    let (suffix, _) = suffixes(cfg.family)
        .iter()
        .find(|(_, k)| *k == kind)
        .ok_or_else(|| Error::Input(format!("{kind:?} does not exist in {} models", cfg.family.name())))?;
    let (in_dim, out_dim) = dims(cfg, kind);
    Ok(EditableModule { name: format!("{}.{layer}.{suffix}", layers_name(cfg.family)), layer, kind, layout: layout(cfg.family), in_dim, out_dim })
}

/// The MLP down-projection of `layer`: the module ROME and MEMIT rewrite.
pub fn mlp_down(cfg: &ModelConfig, layer: usize) -> Result<EditableModule> {
    module(cfg, layer, ModuleKind::MlpDown)
}

/// Every linear module an edit can target, layer by layer.
pub fn editable_modules(cfg: &ModelConfig) -> Vec<EditableModule> {
    (0..cfg.n_layer).flat_map(|l| suffixes(cfg.family).iter().map(move |(_, k)| (l, *k))).map(|(l, k)| module(cfg, l, k).expect("layer in range")).collect()
}

/// Whether `name` (with or without the family prefix and `.weight`) has the shape of a linear
/// module's name — `<blocks>.<n>.<linear suffix>` — whatever its layer number; biases, norms and
/// embeddings do not.
pub fn is_linear_name(cfg: &ModelConfig, name: &str) -> bool {
    let bare = name.strip_suffix(".weight").unwrap_or(name);
    let full = if bare.starts_with(cfg.family.prefix()) { bare.to_string() } else { format!("{}{bare}", cfg.family.prefix()) };
    full.strip_prefix(layers_name(cfg.family))
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(layer, suffix)| layer.parse::<usize>().is_ok() && suffixes(cfg.family).iter().any(|(s, _)| *s == suffix))
}

/// The parameters of one block and outside the blocks (`weight`/`bias` leaves), as the
/// checkpoints name them.
fn parameter_leaves(cfg: &ModelConfig) -> (Vec<&'static str>, Vec<&'static str>) {
    let (block, top): (&[&str], &[&str]) = match cfg.family {
        Family::Gpt2 => (
            &[
                "ln_1.weight",
                "ln_1.bias",
                "attn.c_attn.weight",
                "attn.c_attn.bias",
                "attn.c_proj.weight",
                "attn.c_proj.bias",
                "ln_2.weight",
                "ln_2.bias",
                "mlp.c_fc.weight",
                "mlp.c_fc.bias",
                "mlp.c_proj.weight",
                "mlp.c_proj.bias",
            ],
            &["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"],
        ),
        Family::GptJ => (
            &[
                "ln_1.weight",
                "ln_1.bias",
                "attn.q_proj.weight",
                "attn.k_proj.weight",
                "attn.v_proj.weight",
                "attn.out_proj.weight",
                "mlp.fc_in.weight",
                "mlp.fc_in.bias",
                "mlp.fc_out.weight",
                "mlp.fc_out.bias",
            ],
            &["transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight", "lm_head.bias"],
        ),
        Family::GptNeoX => (
            &[
                "input_layernorm.weight",
                "input_layernorm.bias",
                "post_attention_layernorm.weight",
                "post_attention_layernorm.bias",
                "attention.query_key_value.weight",
                "attention.query_key_value.bias",
                "attention.dense.weight",
                "attention.dense.bias",
                "mlp.dense_h_to_4h.weight",
                "mlp.dense_h_to_4h.bias",
                "mlp.dense_4h_to_h.weight",
                "mlp.dense_4h_to_h.bias",
            ],
            &["gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight"],
        ),
        _ => return decoder_leaves(cfg),
    };
    (block.to_vec(), top.to_vec())
}

/// The Llama-style block's parameters, with the biases and norms its config has.
fn decoder_leaves(cfg: &ModelConfig) -> (Vec<&'static str>, Vec<&'static str>) {
    let d = cfg.decoder.as_ref().expect("decoder families carry a decoder config");
    // transformers' registration order: attention, MLP, then the norms.
    let mut block = Vec::new();
    for (w, b, has_bias) in [
        ("self_attn.q_proj.weight", "self_attn.q_proj.bias", d.qkv_bias),
        ("self_attn.k_proj.weight", "self_attn.k_proj.bias", d.qkv_bias),
        ("self_attn.v_proj.weight", "self_attn.v_proj.bias", d.qkv_bias),
        ("self_attn.o_proj.weight", "self_attn.o_proj.bias", d.o_bias),
    ] {
        block.push(w);
        if has_bias {
            block.push(b);
        }
    }
    if d.qk_norm {
        block.extend(["self_attn.q_norm.weight", "self_attn.k_norm.weight"]);
    }
    for (w, b) in [("mlp.gate_proj.weight", "mlp.gate_proj.bias"), ("mlp.up_proj.weight", "mlp.up_proj.bias"), ("mlp.down_proj.weight", "mlp.down_proj.bias")] {
        block.push(w);
        if d.mlp_bias {
            block.push(b);
        }
    }
    block.extend(["input_layernorm.weight", "post_attention_layernorm.weight"]);
    if d.sandwich_norms {
        block.extend(["pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"]);
    }
    (block, vec!["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"])
}

/// Every parameter of a model of this config, by checkpoint name: the embeddings, each block's
/// in block order, the final norm and the head (a tied head too: it is a name a delta may use).
pub fn parameter_names(cfg: &ModelConfig) -> Vec<String> {
    let (block, top) = parameter_leaves(cfg);
    let blocks = layers_name(cfg.family);
    let per_block = (0..cfg.n_layer).flat_map(|l| block.iter().map(move |leaf| format!("{blocks}.{l}.{leaf}")));
    top.iter().map(|t| t.to_string()).chain(per_block).collect()
}

/// The checkpoint name (with the family prefix) of a parameter of this model, if `name` is one:
/// `transformer.h.0.mlp.c_proj.bias`, `h.3.ln_1.weight`, `gpt_neox.final_layer_norm.bias`, ...
pub fn parameter_name(cfg: &ModelConfig, name: &str) -> Option<String> {
    let prefix = cfg.family.prefix();
    let (block, top) = parameter_leaves(cfg);
    let full = if name.starts_with(prefix) || top.contains(&name) { name.to_string() } else { format!("{prefix}{name}") };
    if top.contains(&full.as_str()) {
        return Some(full);
    }
    let rest = full.strip_prefix(layers_name(cfg.family))?.strip_prefix('.')?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    (layer < cfg.n_layer && block.contains(&leaf)).then_some(full)
}

/// Parses a module name (with or without the family prefix, with or without `.weight`),
/// e.g. `transformer.h.17.mlp.c_proj` or `h.17.mlp.c_proj.weight`.
pub fn find(cfg: &ModelConfig, name: &str) -> Result<EditableModule> {
    let bare = name.strip_suffix(".weight").unwrap_or(name);
    let full = if bare.starts_with(cfg.family.prefix()) { bare.to_string() } else { format!("{}{bare}", cfg.family.prefix()) };
    let unknown = || {
        let example = mlp_down(cfg, cfg.n_layer / 2).map(|m| m.name).unwrap_or_default();
        Error::Input(format!("`{name}` is not a linear module of this {} model (e.g. `{example}`; `edit inspect` lists them all)", cfg.family.name()))
    };
    let rest = full.strip_prefix(layers_name(cfg.family)).and_then(|r| r.strip_prefix('.')).ok_or_else(unknown)?;
    let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let kind = suffixes(cfg.family).iter().find(|(s, _)| *s == suffix).map(|(_, k)| *k).ok_or_else(unknown)?;
    module(cfg, layer, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_reference_templates() {
        let gpt2 = ModelConfig::from_json(
            &json!({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 20, "vocab_size": 10, "n_positions": 4}),
            std::path::Path::new("c"),
        )
        .unwrap();
        let m = mlp_down(&gpt2, 17).unwrap();
        assert_eq!(m.name, "transformer.h.17.mlp.c_proj");
        assert_eq!(m.stored_shape(), [32, 8]);
        assert_eq!(find(&gpt2, "h.17.mlp.c_proj.weight").unwrap(), m);
        assert!(find(&gpt2, "transformer.h.20.mlp.c_proj").is_err());
        assert!(find(&gpt2, "transformer.h.3.mlp.nope").unwrap_err().to_string().contains("edit inspect"));
        let neox = ModelConfig::from_json(
            &json!({"model_type": "gpt_neox", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2,
                    "intermediate_size": 24, "vocab_size": 10, "max_position_embeddings": 4, "rotary_pct": 0.5}),
            std::path::Path::new("c"),
        )
        .unwrap();
        let m = mlp_down(&neox, 1).unwrap();
        assert_eq!(m.name, "gpt_neox.layers.1.mlp.dense_4h_to_h");
        assert_eq!(m.stored_shape(), [8, 24]);
    }
}
