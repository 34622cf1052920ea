//! `edit stats export`: a model's cached statistics copied into a folder laid out for a Hub
//! dataset repository (`<corpus>/<module>_<precision>_<samples>.safetensors`, the cache's own
//! names) with a `README.md` dataset card, ready for `huggingface-cli upload`. `edit stats pull`
//! reads such a repository back into another machine's cache.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cache::StatsMeta;
use super::resolve::{scan, Found};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::identity::ModelIdentity;

/// One file written by an export, as a pipeline reads it.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedFile {
    /// Path inside the export folder (and the repository).
    pub path: String,
    pub layer: usize,
    pub module: String,
    pub dataset: String,
    pub samples: usize,
    pub auto: bool,
    pub precision: super::Precision,
    pub tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub card: PathBuf,
    pub files: Vec<ExportedFile>,
}

/// Copies every cached statistics file of these weights (of `layers`, default all) under
/// `stats_dir` into `out`, with a dataset card. All files are staged and moved into place
/// together: an export that fails leaves `out` as it was.
pub fn export(stats_dir: &Path, identity: &ModelIdentity, cfg: &ModelConfig, layers: Option<&[usize]>, out: &Path) -> Result<ExportReport> {
    let all: Vec<usize> = (0..cfg.n_layer).collect();
    let layers = layers.unwrap_or(&all);
    super::ensure::check_layers(cfg, layers)?;
    // Statistics made on the weights an edited model came from describe it too, but a card
    // naming one fingerprint should hold only files made on that one.
    let found: Vec<Found> = scan(stats_dir, identity, cfg, layers)?.into_iter().filter(|f| identity.is_weights(&f.meta.identity.weights_fingerprint)).collect();
    if found.is_empty() {
        return Err(Error::Input(format!(
            "no cached statistics of {} (weights {}) for layer(s) {} under {}: compute them with `edit stats --model {} --layers …` first",
            identity.model,
            short(&identity.weights_fingerprint),
            super::format_layers(layers),
            stats_dir.display(),
            identity.model
        )));
    }
    let mut chosen: BTreeMap<String, &Found> = BTreeMap::new();
    for f in &found {
        let name = f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rel = format!("{}/{name}", crate::data::sanitize(&f.meta.dataset));
        // The same weights reached by two names leave two copies of one file in the cache.
        if let Some(first) = chosen.get(&rel) {
            tracing::warn!("{} and {} are both {rel}; exporting the first", first.path.display(), f.path.display());
            continue;
        }
        chosen.insert(rel, f);
    }
    if out.is_file() {
        return Err(Error::Input(format!("{} is a file; give a folder to export into", out.display())));
    }
    let mut outputs = crate::fsutil::Outputs::new();
    let mut files = Vec::new();
    for (rel, f) in &chosen {
        let target = out.join(rel);
        let tmp = outputs.stage(&target)?;
        std::fs::copy(&f.path, &tmp).map_err(|e| Error::io(&f.path, e))?;
        files.push(ExportedFile {
            path: rel.clone(),
            layer: f.layer,
            module: f.meta.module.clone(),
            dataset: f.meta.dataset.clone(),
            samples: f.meta.samples,
            auto: f.meta.auto.is_some(),
            precision: f.meta.precision,
            tokens: f.meta.tokens,
        });
    }
    let card = out.join("README.md");
    let tmp = outputs.stage(&card)?;
    let metas: Vec<&StatsMeta> = chosen.values().map(|f| &f.meta).collect();
    std::fs::write(&tmp, dataset_card(identity, cfg, &files, &metas)).map_err(|e| Error::io(&tmp, e))?;
    outputs.commit()?;
    Ok(ExportReport { dir: out.to_path_buf(), card, files })
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// The `edit stats` options that reproduce one set of files (the corpus's flag when edit knows
/// it; local files by the names they were read from).
fn command(identity: &ModelIdentity, meta: &StatsMeta, layers: &[usize]) -> String {
    let corpus = match meta.dataset.as_str() {
        "wikitext-2-test-embedded" => String::new(),
        "wikitext-103-raw-v1" => " --dataset wikitext".into(),
        "wikipedia-20231101.en" => " --dataset wikipedia".into(),
        _ => match meta.source.strip_prefix("collected from ") {
            Some(files) => files.split(", merged from").next().unwrap_or(files).split(", ").map(|f| format!(" --text {f}")).collect(),
            None => format!(" # corpus `{}`", meta.dataset),
        },
    };
    let samples = match &meta.auto {
        Some(a) => format!("--samples auto --tolerance {}", a.tolerance),
        None => format!("--samples {}", meta.samples),
    };
    let revision = match identity.revision.as_deref().and_then(|r| r.split('@').next()) {
        Some(r) if r != "main" => format!(" --revision {r}"),
        _ => String::new(),
    };
    format!(
        "edit stats --model {}{revision} --layers {}{corpus} {samples} --precision {} --max-len {} --batch-tokens {}",
        identity.model,
        super::format_layers(layers),
        meta.precision.name(),
        meta.max_len,
        meta.batch_tokens
    )
}

/// The repository's `README.md`: what the files are, for which weights, from which corpus and
/// sample, how they were made, and how to use them.
fn dataset_card(identity: &ModelIdentity, cfg: &ModelConfig, files: &[ExportedFile], metas: &[&StatsMeta]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "---\ntags:\n- model-editing\n- rome\n- memit\n- alphaedit\n- edit-stats\n---\n");
    let _ = writeln!(s, "# Second-moment statistics of `{}`'s MLP keys\n", identity.model);
    let _ = writeln!(
        s,
        "The uncentred second moment C = E[k kᵀ] of the keys (the inputs of each layer's MLP down-projection, {} wide) over a text corpus: \
         what ROME, MEMIT and AlphaEdit need before they can edit this model. Each file holds the sum `mom2.sum` \
         ({}x{}) and the token count `mom2.count` (C = sum / count), with its full provenance as JSON under the safetensors metadata key `edit.stats`.\n",
        cfg.d_ff, cfg.d_ff, cfg.d_ff
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| model | `{}` |", identity.model);
    if let Some(r) = &identity.revision {
        let _ = writeln!(s, "| revision | `{r}` |");
    }
    let _ = writeln!(s, "| weights fingerprint (SHA-256 over the weight files' SHA-256s) | `{}` |", identity.weights_fingerprint);
    let _ = writeln!(s, "| architecture | {:?}, {} layers, keys {} wide |", cfg.family, cfg.n_layer, cfg.d_ff);
    let _ = writeln!(s, "| made by | edit {} |\n", metas.iter().map(|m| m.tool_version.as_str()).max().unwrap_or(env!("CARGO_PKG_VERSION")));
    let _ = writeln!(s, "## Files\n\n| file | layer | corpus | samples | texts | tokens | precision |\n|---|---|---|---|---|---|---|");
    for (f, m) in files.iter().zip(metas) {
        let samples = if f.auto { format!("auto (of {})", f.samples) } else { f.samples.to_string() };
        let _ = writeln!(s, "| `{}` | {} | {} | {samples} | {} | {} | {} |", f.path, f.layer, m.dataset, m.texts, m.tokens, m.precision.reference_name());
    }
    // One section per set of files made by one job: the same corpus, sample and settings.
    let mut sets: BTreeMap<String, (Vec<usize>, &StatsMeta)> = BTreeMap::new();
    for (f, m) in files.iter().zip(metas) {
        let key = format!("{} {} {} {} {:?}", m.dataset, m.samples, f.auto, m.precision.name(), m.corpus_digest);
        sets.entry(key).or_insert_with(|| (Vec::new(), m)).0.push(f.layer);
    }
    let _ = writeln!(s, "\n## How they were made\n");
    for (layers, m) in sets.values() {
        let _ = writeln!(s, "### {} ({}), layers {}\n", m.dataset, if m.auto.is_some() { "auto" } else { "full sample" }, super::format_layers(layers));
        let _ = writeln!(s, "- source: {}", m.source);
        match &m.corpus_digest {
            Some(d) => {
                let _ = writeln!(s, "- corpus digest (SHA-256 over the corpus files' SHA-256s): `{d}`");
            }
            None => {
                let _ = writeln!(s, "- corpus digest: not recorded (statistics imported or made before edit recorded it)");
            }
        }
        if let Some(rows) = m.corpus_rows {
            let _ = writeln!(s, "- corpus rows: {rows}");
        }
        if let Some(sampling) = &m.sampling {
            let _ = writeln!(s, "- sampling: {sampling}");
        }
        if let Some(a) = &m.auto {
            let last = a.curve.last().map(|c| format!(", last check at {} tokens", c.tokens)).unwrap_or_default();
            let _ = writeln!(
                s,
                "- `--samples auto`: {} to a tolerance of {} on the relative change of C⁻¹K of {} held-out texts' keys{last}",
                if a.converged { "converged" } else { "did NOT converge" },
                a.tolerance,
                a.probe_texts
            );
        }
        let _ = writeln!(s, "- tool: edit {}", m.tool_version);
        if m.source.starts_with("collected") {
            let shards = if m.source.contains("merged from") {
                " (run as shards with `--shard I/N` and merged with `edit stats merge`; the sums are the same)"
            } else {
                ""
            };
            let _ = writeln!(s, "- command{shards}:\n\n  ```sh\n  {}\n  ```", command(identity, m, layers));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "## Use\n\n```sh\nedit stats pull <this repository> --model {}\nedit apply --model {} --method MEMIT …   # finds them in the cache\n```\n\n\
         `edit stats pull` checks every file against the local model (weights fingerprint, layer, module, shape, finite values) \
         before filing it; a file made for other weights is refused.",
        identity.model, identity.model
    );
    s
}
