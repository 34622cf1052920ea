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
    /// The vocabulary size, where two models of a family share depth and width (Llama 2 and 3).
    pub vocab: Option<usize>,
    /// The reference's own values (true), or a starting point of ours (false).
    pub reference: bool,
    /// Chosen for its model when no `--config` is given (one per method and model); the others
    /// are picked by name (`--config ft/gpt2-xl_attn`).
    pub default: bool,
    pub text: &'static str,
}

macro_rules! shipped {
    ($method:ident, $file:literal, $model:literal, $family:ident, $n:literal, $d:literal, $reference:literal, $default:literal) => {
        shipped!(@ $method, $file, $model, $family, $n, $d, None, $reference, $default)
    };
    ($method:ident, $file:literal, $model:literal, $family:ident, $n:literal, $d:literal, vocab $v:literal, $reference:literal, $default:literal) => {
        shipped!(@ $method, $file, $model, $family, $n, $d, Some($v), $reference, $default)
    };
    (@ $method:ident, $file:literal, $model:literal, $family:ident, $n:literal, $d:literal, $vocab:expr, $reference:literal, $default:literal) => {
        Shipped {
            method: Method::$method,
            path: concat!("configs/", $file),
            model: $model,
            family: Family::$family,
            n_layer: $n,
            d_model: $d,
            vocab: $vocab,
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
    // The Llama-style families: the AlphaEdit repository's and EasyEdit's published values where
    // they exist, else starting points at the same relative depth (configs/README.md). Within a
    // family and shape the first row is the default by shape, so Llama 3 comes before Llama 2.
    shipped!(Rome, "rome/meta-llama_Meta-Llama-3-8B-Instruct.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(Rome, "rome/meta-llama_Meta-Llama-3-8B.json", "meta-llama-3-8b", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(Rome, "rome/meta-llama_Llama-3.2-3B.json", "llama-3.2-3b", Llama, 28, 3072, vocab 128256, true, true),
    shipped!(Rome, "rome/meta-llama_Llama-2-7b-hf.json", "llama-2-7b-hf", Llama, 32, 4096, vocab 32000, true, true),
    shipped!(Rome, "rome/mistralai_Mistral-7B-v0.1.json", "mistral-7b-v0.1", Mistral, 32, 4096, vocab 32000, true, true),
    shipped!(Rome, "rome/Qwen_Qwen2.5-7B.json", "qwen2.5-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Rome, "rome/Qwen_Qwen2.5-7B-Instruct.json", "qwen2.5-7b-instruct", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(Rome, "rome/Qwen_Qwen2-7B.json", "qwen2-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Rome, "rome/Qwen_Qwen3-0.6B.json", "qwen3-0.6b", Qwen3, 28, 1024, vocab 151936, false, true),
    shipped!(Rome, "rome/Qwen_Qwen3-1.7B.json", "qwen3-1.7b", Qwen3, 28, 2048, vocab 151936, false, true),
    shipped!(Rome, "rome/Qwen_Qwen3-4B.json", "qwen3-4b", Qwen3, 36, 2560, vocab 151936, false, true),
    shipped!(Rome, "rome/Qwen_Qwen3-8B.json", "qwen3-8b", Qwen3, 36, 4096, vocab 151936, false, true),
    shipped!(Rome, "rome/google_gemma-2-2b.json", "gemma-2-2b", Gemma2, 26, 2304, vocab 256000, false, true),
    shipped!(Rome, "rome/google_gemma-2-9b.json", "gemma-2-9b", Gemma2, 42, 3584, vocab 256000, false, true),
    shipped!(Rome, "rome/google_gemma-3-1b-pt.json", "gemma-3-1b-pt", Gemma3, 26, 1152, vocab 262144, false, true),
    shipped!(Memit, "memit/meta-llama_Meta-Llama-3-8B-Instruct.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(Memit, "memit/meta-llama_Meta-Llama-3-8B.json", "meta-llama-3-8b", Llama, 32, 4096, vocab 128256, false, true),
    shipped!(Memit, "memit/meta-llama_Llama-3.2-3B.json", "llama-3.2-3b", Llama, 28, 3072, vocab 128256, true, true),
    shipped!(Memit, "memit/meta-llama_Llama-2-7b-hf.json", "llama-2-7b-hf", Llama, 32, 4096, vocab 32000, true, true),
    shipped!(Memit, "memit/mistralai_Mistral-7B-v0.1.json", "mistral-7b-v0.1", Mistral, 32, 4096, vocab 32000, true, true),
    shipped!(Memit, "memit/Qwen_Qwen2.5-7B.json", "qwen2.5-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Memit, "memit/Qwen_Qwen2.5-7B-Instruct.json", "qwen2.5-7b-instruct", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(Memit, "memit/Qwen_Qwen2-7B.json", "qwen2-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Memit, "memit/Qwen_Qwen3-0.6B.json", "qwen3-0.6b", Qwen3, 28, 1024, vocab 151936, false, true),
    shipped!(Memit, "memit/Qwen_Qwen3-1.7B.json", "qwen3-1.7b", Qwen3, 28, 2048, vocab 151936, false, true),
    shipped!(Memit, "memit/Qwen_Qwen3-4B.json", "qwen3-4b", Qwen3, 36, 2560, vocab 151936, false, true),
    shipped!(Memit, "memit/Qwen_Qwen3-8B.json", "qwen3-8b", Qwen3, 36, 4096, vocab 151936, false, true),
    shipped!(Memit, "memit/google_gemma-2-2b.json", "gemma-2-2b", Gemma2, 26, 2304, vocab 256000, false, true),
    shipped!(Memit, "memit/google_gemma-2-9b.json", "gemma-2-9b", Gemma2, 42, 3584, vocab 256000, false, true),
    shipped!(Memit, "memit/google_gemma-3-1b-pt.json", "gemma-3-1b-pt", Gemma3, 26, 1152, vocab 262144, false, true),
    shipped!(AlphaEdit, "alphaedit/meta-llama_Meta-Llama-3-8B-Instruct.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(AlphaEdit, "alphaedit/meta-llama_Meta-Llama-3-8B-Instruct_easyedit.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, false),
    shipped!(AlphaEdit, "alphaedit/meta-llama_Meta-Llama-3-8B.json", "meta-llama-3-8b", Llama, 32, 4096, vocab 128256, false, true),
    shipped!(AlphaEdit, "alphaedit/meta-llama_Llama-3.1-8B-Instruct.json", "llama-3.1-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen2.5-7B-Instruct.json", "qwen2.5-7b-instruct", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen2.5-7B.json", "qwen2.5-7b", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen3-0.6B.json", "qwen3-0.6b", Qwen3, 28, 1024, vocab 151936, false, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen3-1.7B.json", "qwen3-1.7b", Qwen3, 28, 2048, vocab 151936, false, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen3-4B.json", "qwen3-4b", Qwen3, 36, 2560, vocab 151936, false, true),
    shipped!(AlphaEdit, "alphaedit/Qwen_Qwen3-8B.json", "qwen3-8b", Qwen3, 36, 4096, vocab 151936, false, true),
    shipped!(AlphaEdit, "alphaedit/google_gemma-2-2b.json", "gemma-2-2b", Gemma2, 26, 2304, vocab 256000, false, true),
    shipped!(AlphaEdit, "alphaedit/google_gemma-2-9b.json", "gemma-2-9b", Gemma2, 42, 3584, vocab 256000, false, true),
    shipped!(AlphaEdit, "alphaedit/google_gemma-3-1b-pt.json", "gemma-3-1b-pt", Gemma3, 26, 1152, vocab 262144, false, true),
    shipped!(Ft, "ft/meta-llama_Meta-Llama-3-8B-Instruct_unconstr.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(Ft, "ft/meta-llama_Meta-Llama-3-8B_unconstr.json", "meta-llama-3-8b", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(Ft, "ft/meta-llama_Llama-3.2-3B_unconstr.json", "llama-3.2-3b", Llama, 28, 3072, vocab 128256, true, true),
    shipped!(Ft, "ft/meta-llama_Llama-2-7b-hf_unconstr.json", "llama-2-7b-hf", Llama, 32, 4096, vocab 32000, true, true),
    shipped!(Ft, "ft/mistralai_Mistral-7B-v0.1_constr.json", "mistral-7b-v0.1", Mistral, 32, 4096, vocab 32000, true, true),
    shipped!(Ft, "ft/Qwen_Qwen2.5-7B_unconstr.json", "qwen2.5-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Ft, "ft/Qwen_Qwen2-7B_unconstr.json", "qwen2-7b", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Mend, "mend/meta-llama_Meta-Llama-3-8B.json", "meta-llama-3-8b", Llama, 32, 4096, vocab 128256, false, true),
    shipped!(Mend, "mend/meta-llama_Meta-Llama-3-8B-Instruct.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, false, true),
    shipped!(Mend, "mend/meta-llama_Llama-3.2-3B.json", "llama-3.2-3b", Llama, 28, 3072, vocab 128256, false, true),
    shipped!(Mend, "mend/meta-llama_Llama-2-7b-hf.json", "llama-2-7b-hf", Llama, 32, 4096, vocab 32000, false, true),
    shipped!(Mend, "mend/mistralai_Mistral-7B-v0.1.json", "mistral-7b-v0.1", Mistral, 32, 4096, vocab 32000, false, true),
    shipped!(Mend, "mend/Qwen_Qwen2.5-7B.json", "qwen2.5-7b", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(Mend, "mend/Qwen_Qwen2.5-7B-Instruct.json", "qwen2.5-7b-instruct", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(Mend, "mend/Qwen_Qwen2-7B.json", "qwen2-7b", Qwen2, 28, 3584, vocab 152064, false, true),
    shipped!(Mend, "mend/Qwen_Qwen3-0.6B.json", "qwen3-0.6b", Qwen3, 28, 1024, vocab 151936, false, true),
    shipped!(Mend, "mend/Qwen_Qwen3-1.7B.json", "qwen3-1.7b", Qwen3, 28, 2048, vocab 151936, false, true),
    shipped!(Mend, "mend/Qwen_Qwen3-4B.json", "qwen3-4b", Qwen3, 36, 2560, vocab 151936, false, true),
    shipped!(Mend, "mend/Qwen_Qwen3-8B.json", "qwen3-8b", Qwen3, 36, 4096, vocab 151936, false, true),
    shipped!(Mend, "mend/google_gemma-2-2b.json", "gemma-2-2b", Gemma2, 26, 2304, vocab 256000, false, true),
    shipped!(Mend, "mend/google_gemma-2-9b.json", "gemma-2-9b", Gemma2, 42, 3584, vocab 256000, false, true),
    shipped!(Mend, "mend/google_gemma-3-1b-pt.json", "gemma-3-1b-pt", Gemma3, 26, 1152, vocab 262144, false, true),    // UltraEdit: XiaojieGu/UltraEdit's `config/model/*.yaml` `edit_modules` with its editor and
    // dataset settings; EMMET: zjunlp/EasyEdit's `hparams/EMMET/*.yaml` (configs/README.md).
    shipped!(UltraEdit, "ultraedit/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(UltraEdit, "ultraedit/EleutherAI_gpt-j-6B_wikibigedit.json", "gpt-j-6b", GptJ, 28, 4096, true, false),
    shipped!(UltraEdit, "ultraedit/mistralai_Mistral-7B-v0.3.json", "mistral-7b-v0.3", Mistral, 32, 4096, true, true),
    shipped!(UltraEdit, "ultraedit/meta-llama_Meta-Llama-3-8B-Instruct.json", "meta-llama-3-8b-instruct", Llama, 32, 4096, vocab 128256, true, true),
    shipped!(UltraEdit, "ultraedit/Qwen_Qwen2.5-7B-Instruct.json", "qwen2.5-7b-instruct", Qwen2, 28, 3584, vocab 152064, true, true),
    shipped!(Emmet, "emmet/gpt2-xl.json", "gpt2-xl", Gpt2, 48, 1600, true, true),
    shipped!(Emmet, "emmet/EleutherAI_gpt-j-6B.json", "gpt-j-6b", GptJ, 28, 4096, true, true),
    shipped!(Emmet, "emmet/meta-llama_Llama-2-7b-hf.json", "llama-2-7b-hf", Llama, 32, 4096, vocab 32000, true, true),
    shipped!(Emmet, "emmet/meta-llama_Llama-3.2-3B.json", "llama-3.2-3b", Llama, 28, 3072, vocab 128256, true, true),
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
        self.family == cfg.family && self.n_layer == cfg.n_layer && self.d_model == cfg.d_model && self.vocab.is_none_or(|v| v == cfg.vocab_size)
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
    SHIPPED.iter().filter(|s| s.method == method).find(|s| s.name() == bare || s.name().split_once('/').is_some_and(|(_, file)| file == bare))
}

/// The names of `method`'s shipped configs, for messages.
pub fn names(method: Method) -> Vec<&'static str> {
    SHIPPED.iter().filter(|s| s.method == method).map(Shipped::name).collect()
}
