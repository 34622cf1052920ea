//! The configs compiled into the binary (`configs/`), and how one is found for a model.

use super::Method;
use crate::config::{Family, ModelConfig};

/// A config file compiled into the binary.
pub struct Shipped {
    pub method: Method,
    /// Path in the repository, e.g. `configs/memit/gpt2-xl.json`.
    pub path: &'static str,
    /// Hub model name (last path component, lower case) it is for.
    pub model: &'static str,
    pub family: Family,
    pub n_layer: usize,
    pub d_model: usize,
    /// The reference's own values (true), or a starting point of ours (false).
    pub reference: bool,
    /// Chosen for its model when no `--config` is given (one per method and model); the others
    /// are picked by name (`--config ft/gpt2-xl_attn`).
    pub default: bool,
    pub text: &'static str,
}

macro_rules! shipped {
    ($method:ident, $file:literal, $model:literal, $family:ident, $n:literal, $d:literal, $reference:literal, $default:literal) => {
        Shipped {
            method: Method::$method,
            path: concat!("configs/", $file),
            model: $model,
            family: Family::$family,
            n_layer: $n,
            d_model: $d,
            reference: $reference,
            default: $default,
            text: include_str!(concat!("../../../configs/", $file)),
        }
    };
}

/// Every config file shipped in `configs/`.
#[rustfmt::skip]
pub static SHIPPED: &[Shipped] = &[
    shipped!(Rome, "rome/gpt2.json", "gpt2", Gpt2, 12, 768, false, true),
    shipped!(Rome, "rome/gpt2-medium.json", "gpt2-medium", Gpt2, 24, 1024, true, true),
    shipped!(Rome, "rome/gpt2-large.json", "gpt2-large", Gpt2, 36, 1280, true, true),
    shipped!(Rome, "rome/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(Rome, "rome/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Rome, "rome/EleutherAI_gpt-neox-20b.json", "gpt-neox-20b", GptNeoX, 44, 6144, true, true),
    shipped!(Memit, "memit/gpt2.json", "gpt2", Gpt2, 12, 768, false, true),
    shipped!(Memit, "memit/gpt2-medium.json", "gpt2-medium", Gpt2, 24, 1024, false, true),
    shipped!(Memit, "memit/gpt2-large.json", "gpt2-large", Gpt2, 36, 1280, false, true),
    shipped!(Memit, "memit/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(Memit, "memit/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Memit, "memit/EleutherAI_gpt-neox-20b.json", "gpt-neox-20b", GptNeoX, 44, 6144, false, true),
    shipped!(Ft, "ft/gpt2_constr.json", "gpt2", Gpt2, 12, 768, false, true),
    shipped!(Ft, "ft/gpt2-medium_constr.json", "gpt2-medium", Gpt2, 24, 1024, true, true),
    shipped!(Ft, "ft/gpt2-large_constr.json", "gpt2-large", Gpt2, 36, 1280, true, true),
    shipped!(Ft, "ft/gpt2-xl_constr.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(Ft, "ft/gpt2-xl_unconstr.json", "gpt2-xl", Gpt2, 48, 1600, true, false),
    shipped!(Ft, "ft/gpt2-xl_attn.json", "gpt2-xl", Gpt2, 48, 1600, true, false),
    shipped!(Ft, "ft/gpt2-xl_ft-l-paper.json", "gpt2-xl", Gpt2, 48, 1600, false, false),
    shipped!(Ft, "ft/EleutherAI_gpt-j-6B_constr.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Ft, "ft/EleutherAI_gpt-j-6B_unconstr.json", "gpt-j-6b", GptJ, 28, 4096, true, false),
    shipped!(Ft, "ft/EleutherAI_gpt-j-6B_wd.json", "gpt-j-6b", GptJ, 28, 4096, true, false),
    shipped!(Ft, "ft/EleutherAI_gpt-j-6B_ft-l-paper.json", "gpt-j-6b", GptJ, 28, 4096, false, false),
    shipped!(Ft, "ft/EleutherAI_gpt-neox-20b_constr.json", "gpt-neox-20b", GptNeoX, 44, 6144, false, true),
    shipped!(AlphaEdit, "alphaedit/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(AlphaEdit, "alphaedit/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Mend, "mend/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(Mend, "mend/gpt2-xl_CF.json", "gpt2-xl", Gpt2, 48, 1600, true, false),
    shipped!(Mend, "mend/gpt2-xl_zsRE.json", "gpt2-xl", Gpt2, 48, 1600, true, false),
    shipped!(Mend, "mend/gpt2-xl_executor.json", "gpt2-xl", Gpt2, 48, 1600, false, false),
    shipped!(Mend, "mend/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Mend, "mend/EleutherAI_gpt-j-6B_CF.json", "gpt-j-6b", GptJ, 28, 4096, true, false),
    shipped!(Mend, "mend/EleutherAI_gpt-j-6B_executor.json", "gpt-j-6b", GptJ, 28, 4096, false, false),
];

impl Shipped {
    /// `configs/memit/gpt2-xl.json (reference)` / `(starting point, not reference)`.
    pub fn describe(&self) -> String {
        let kind = if self.reference { "reference" } else { "starting point, not reference" };
        format!("{} ({kind})", self.path)
    }

    /// The name `--config` accepts for it: `ft/gpt2-xl_attn`.
    pub fn name(&self) -> &'static str {
        self.path.trim_start_matches("configs/").trim_end_matches(".json")
    }

    fn fits(&self, cfg: &ModelConfig) -> bool {
        self.family == cfg.family && self.n_layer == cfg.n_layer && self.d_model == cfg.d_model
    }
}

/// The Hub model name of a model id or path: its last path component, lower case.
fn hub_name(model_id: &str) -> String {
    let trimmed = model_id.trim().trim_end_matches(['/', '\\']);
    trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed).to_ascii_lowercase()
}

/// The default shipped config of `method` for this model: by Hub name, else by family and size.
pub fn shipped_for(method: Method, cfg: &ModelConfig, model_id: &str) -> Option<&'static Shipped> {
    let name = hub_name(model_id);
    let candidates = || SHIPPED.iter().filter(move |s| s.method == method && s.default);
    if let Some(s) = candidates().find(|s| s.model == name) {
        if s.family == cfg.family && s.n_layer == cfg.n_layer {
            return Some(s);
        }
        tracing::warn!(
            "the model is named {name} but is a {}-layer {} model, not a {}-layer {}; not using {}",
            cfg.n_layer,
            cfg.family.name(),
            s.n_layer,
            s.family.name(),
            s.path
        );
    }
    candidates().find(|s| s.fits(cfg))
}

/// A shipped config of `method` by name: `ft/gpt2-xl_attn`, `gpt2-xl_attn`, with or without
/// `configs/` and `.json`.
pub fn named(method: Method, name: &str) -> Option<&'static Shipped> {
    let bare = name.trim_start_matches("configs/").trim_end_matches(".json");
    SHIPPED
        .iter()
        .filter(|s| s.method == method)
        .find(|s| s.name() == bare || s.name().split_once('/').is_some_and(|(_, file)| file == bare))
}

/// The names of `method`'s shipped configs, for messages.
pub fn names(method: Method) -> Vec<&'static str> {
    SHIPPED.iter().filter(|s| s.method == method).map(Shipped::name).collect()
}
