//! Text corpora for statistics: the embedded WikiText-2 sample, local files (.txt, .jsonl,
//! .parquet), and Hub datasets (parquet files through the Hugging Face cache).
//!
//! Sampling follows the reference: a seed-1 Python shuffle of the corpus' row indices, the
//! first N kept, in that order.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;

use crate::error::{Error, Result};
use crate::pyrandom::shuffled_indices;

/// The WikiText-2 test split, compiled in (CC BY-SA 3.0, see `src/data/README.md`).
pub const EMBEDDED_WIKITEXT: &str = include_str!("data/wikitext-2-raw-test.txt");

/// The seed of the reference's `FixedRandomSubsetSampler`.
pub const SAMPLE_SEED: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubDataset {
    /// Salesforce/wikitext, wikitext-103-raw-v1, train split (parquet).
    Wikitext,
    /// wikimedia/wikipedia, 20231101.en, train split (parquet).
    Wikipedia,
}

impl HubDataset {
    pub fn repo(self) -> &'static str {
        match self {
            HubDataset::Wikitext => "Salesforce/wikitext",
            HubDataset::Wikipedia => "wikimedia/wikipedia",
        }
    }
    /// Folder of the train parquet files inside the repo.
    pub fn prefix(self) -> &'static str {
        match self {
            HubDataset::Wikitext => "wikitext-103-raw-v1/train-",
            HubDataset::Wikipedia => "20231101.en/train-",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Corpus {
    Embedded,
    /// Local files, identified by the SHA-256 of their bytes (in order), not by their paths:
    /// the same file reached by two paths is one corpus, an edited file another.
    Files {
        paths: Vec<PathBuf>,
        digest: String,
    },
    Hub(HubDataset),
}

impl Corpus {
    /// A corpus of local files; their digests are remembered in `memo_dir` by path, size and
    /// modification time, so a large corpus is hashed once.
    pub fn from_files(paths: Vec<PathBuf>, memo_dir: &Path) -> Result<Self> {
        let digest = files_digest(&paths, &memo_dir.join("corpus-digests.json"))?;
        Ok(Corpus::Files { paths, digest })
    }

    /// A short stable name for cache paths and metadata.
    pub fn id(&self) -> String {
        match self {
            Corpus::Embedded => "wikitext-2-test-embedded".into(),
            Corpus::Hub(HubDataset::Wikitext) => "wikitext-103-raw-v1".into(),
            Corpus::Hub(HubDataset::Wikipedia) => "wikipedia-20231101.en".into(),
            Corpus::Files { digest, .. } => format!("files-{}", &digest[..16]),
        }
    }

    /// What a person reads: the dataset, or the files' names.
    pub fn describe(&self) -> String {
        match self {
            Corpus::Embedded => "the embedded WikiText-2 test split".into(),
            Corpus::Hub(ds) => format!("{} ({})", ds.repo(), self.id()),
            Corpus::Files { paths, .. } => paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Keeps `[A-Za-z0-9._-]`, maps the rest to `_`, so names are safe and readable.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// Sampled texts in sample order, how many rows the corpus had, and its content digest.
pub struct Sample {
    pub texts: Vec<String>,
    pub corpus_rows: usize,
    /// SHA-256 over the corpus files' SHA-256s in order (of the embedded text for the embedded
    /// corpus): recorded in statistics files so that others can tell which corpus made them.
    pub corpus_digest: String,
}

impl Sample {
    /// How the texts were drawn, in words a statistics file records: enough to redo the sample.
    pub fn sampling(&self, max_len: usize, held_out: usize) -> String {
        let mut s = format!(
            "the first {} of a seed-{SAMPLE_SEED} Python shuffle of the corpus's {} rows (the reference's FixedRandomSubsetSampler), in that order; texts truncated to {max_len} tokens",
            self.texts.len() + held_out,
            self.corpus_rows
        );
        if held_out > 0 {
            s.push_str(&format!("; the last {held_out} held out as convergence probes, not summed"));
        }
        s
    }
}

/// The digest of a corpus made of `files` (the combination `Corpus::Files` is named by).
fn files_digest(files: &[PathBuf], memo: &Path) -> Result<String> {
    use sha2::Digest;
    let mut memo = crate::digest::DigestMemo::open(memo.to_path_buf());
    let mut h = sha2::Sha256::new();
    for d in memo.digests(files)? {
        h.update(d.as_bytes());
    }
    memo.save();
    Ok(crate::checkpoint::hex(&h.finalize()))
}

/// Row `i` of every source, addressable for sampling.
trait Rows {
    fn len(&self) -> usize;
    /// Texts at the sorted indices `wanted`, returned in the same order.
    fn fetch(&self, wanted: &[usize]) -> Result<Vec<String>>;
}

struct InMemory(Vec<String>);

impl Rows for InMemory {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn fetch(&self, wanted: &[usize]) -> Result<Vec<String>> {
        Ok(wanted.iter().map(|&i| self.0[i].clone()).collect())
    }
}

/// Draws `n` texts as the reference does and returns them in sample order, with the corpus's
/// `digest`.
fn sample_rows(rows: &dyn Rows, n: usize, digest: String) -> Result<Sample> {
    let total = rows.len();
    let order: Vec<usize> = shuffled_indices(total, SAMPLE_SEED).into_iter().take(n).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    // A permutation's prefix has no repeated index, so each fetched text moves out exactly once.
    let mut fetched: Vec<Option<String>> = rows.fetch(&sorted)?.into_iter().map(Some).collect();
    let texts = order.iter().map(|i| fetched[sorted.binary_search(i).expect("sampled index present")].take().expect("each index once")).collect();
    Ok(Sample { texts, corpus_rows: total, corpus_digest: digest })
}

/// Lines of a text file (without line ends), one text per line.
fn txt_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

pub fn sample(corpus: &Corpus, n: usize, hub: &crate::hub::HubOptions) -> Result<Sample> {
    match corpus {
        Corpus::Embedded => {
            // Combined as `Files` combines one file's digest: the same as `--text` of the same bytes.
            use sha2::Digest;
            let text = crate::checkpoint::hex(&sha2::Sha256::digest(EMBEDDED_WIKITEXT.as_bytes()));
            let digest = crate::checkpoint::hex(&sha2::Sha256::digest(text.as_bytes()));
            sample_rows(&InMemory(txt_lines(EMBEDDED_WIKITEXT)), n, digest)
        }
        Corpus::Files { paths: files, digest } => {
            // Parquet files are read lazily (only the sampled rows); text formats are small.
            if files.iter().all(|f| is_parquet(f)) {
                sample_rows(&ParquetRows::open(files.clone())?, n, digest.clone())
            } else {
                let mut all = Vec::new();
                for f in files {
                    all.extend(read_texts(f)?);
                }
                sample_rows(&InMemory(all), n, digest.clone())
            }
        }
        Corpus::Hub(ds) => {
            let files = crate::hub::dataset_files(ds.repo(), ds.prefix(), ".parquet", hub)?;
            // Hashed once (remembered by path, size and time): the Hub's revision names can move.
            let digest = files_digest(&files, &crate::digest::cache_home().join("corpus-digests.json"))?;
            sample_rows(&ParquetRows::open(files)?, n, digest)
        }
    }
}

fn is_parquet(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Every text of one local file: `.txt` (a text per line), `.jsonl` (`text` field), `.parquet` (`text` column).
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "parquet" => {
            let rows = ParquetRows::open(vec![path.to_path_buf()])?;
            let all: Vec<usize> = (0..rows.len()).collect();
            rows.fetch(&all)
        }
        "jsonl" | "json" => {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            let mut out = Vec::new();
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| Error::io(path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                    Error::Input(format!("{} line {}: not valid JSON ({e}); expected one {{\"text\": ...}} object per line", path.display(), i + 1))
                })?;
                let text =
                    v.get("text").and_then(|t| t.as_str()).ok_or_else(|| Error::Input(format!("{} line {}: no string field `text`", path.display(), i + 1)))?;
                out.push(text.to_string());
            }
            Ok(out)
        }
        "txt" | "raw" | "" => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            Ok(txt_lines(&text))
        }
        other => Err(Error::Input(format!(
            "{}: unsupported text file type `.{other}`; use .txt (one text per line), .jsonl (a `text` field per line) or .parquet (a `text` column)",
            path.display()
        ))),
    }
}

/// Parquet files read through their row-group index, so sampling touches only the row groups
/// that hold sampled rows.
struct ParquetRows {
    files: Vec<PathBuf>,
    /// (file, row group, first global row, rows)
    groups: Vec<(usize, usize, usize, usize)>,
    total: usize,
}

impl ParquetRows {
    fn open(files: Vec<PathBuf>) -> Result<Self> {
        let mut groups = Vec::new();
        let mut total = 0;
        for (fi, path) in files.iter().enumerate() {
            let reader = open_parquet(path)?;
            text_column(&reader, path)?;
            for (gi, rg) in reader.metadata().row_groups().iter().enumerate() {
                let n = rg.num_rows() as usize;
                groups.push((fi, gi, total, n));
                total += n;
            }
        }
        Ok(Self { files, groups, total })
    }
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<File>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    SerializedFileReader::new(f).map_err(|e| Error::Input(format!("{}: not a readable parquet file: {e}", path.display())))
}

/// The projection onto the `text` column.
fn text_column(reader: &SerializedFileReader<File>, path: &Path) -> Result<parquet::schema::types::Type> {
    let schema = reader.metadata().file_metadata().schema();
    let field = schema
        .get_fields()
        .iter()
        .find(|f| f.name() == "text")
        .ok_or_else(|| Error::Input(format!("{}: parquet file has no `text` column", path.display())))?;
    parquet::schema::types::Type::group_type_builder(schema.name())
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

impl Rows for ParquetRows {
    fn len(&self) -> usize {
        self.total
    }

    fn fetch(&self, wanted: &[usize]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(wanted.len());
        let mut w = 0;
        let mut open: Option<(usize, SerializedFileReader<File>, parquet::schema::types::Type)> = None;
        for &(fi, gi, first, n) in &self.groups {
            if w >= wanted.len() {
                break;
            }
            if wanted[w] >= first + n {
                continue;
            }
            if open.as_ref().map(|o| o.0) != Some(fi) {
                let reader = open_parquet(&self.files[fi])?;
                let proj = text_column(&reader, &self.files[fi])?;
                open = Some((fi, reader, proj));
            }
            let (_, reader, proj) = open.as_ref().unwrap();
            let path = &self.files[fi];
            let bad = |e: parquet::errors::ParquetError| Error::Input(format!("{}: {e}", path.display()));
            let rg = reader.get_row_group(gi).map_err(bad)?;
            let rows = rg.get_row_iter(Some(proj.clone())).map_err(bad)?;
            for (j, row) in rows.enumerate() {
                if w >= wanted.len() || wanted[w] >= first + n {
                    break;
                }
                if first + j == wanted[w] {
                    let row = row.map_err(bad)?;
                    let text = row.get_string(0).map_err(bad)?.clone();
                    // Duplicate sampled indices cannot happen (a permutation), but be safe.
                    while w < wanted.len() && wanted[w] == first + j {
                        out.push(text.clone());
                        w += 1;
                    }
                }
            }
        }
        if out.len() != wanted.len() {
            return Err(Error::Input(format!("parquet files hold fewer rows than their metadata says ({} of {} read)", out.len(), wanted.len())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_shuffle_order() {
        let rows = InMemory((0..10).map(|i| format!("t{i}")).collect());
        let s = sample_rows(&rows, 4, String::new()).unwrap();
        let order = shuffled_indices(10, 1);
        let want: Vec<String> = order[..4].iter().map(|i| format!("t{i}")).collect();
        assert_eq!(s.texts, want);
        assert_eq!(s.corpus_rows, 10);
        assert_eq!(sample_rows(&rows, 100, String::new()).unwrap().texts.len(), 10);
    }

    #[test]
    fn embedded_sample_is_wikitext() {
        assert!(EMBEDDED_WIKITEXT.contains("Robert Boulter"));
        assert!(txt_lines(EMBEDDED_WIKITEXT).len() > 2800);
    }
}
