//! An evaluation's output directory: `run.json` (what the run is: a rerun of the same command
//! resumes, another run is refused), `cases.jsonl` (one line per scored record, flushed as it
//! is written; a partial last line from a killed run is dropped), `summary.json`, and for
//! sequential runs `final.jsonl` and `deltas/` (each chunk's edit, so a resumed run rebuilds the
//! accumulated model without editing again).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::summary::CaseResult;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub const RUN_FILE: &str = "run.json";
pub const CASES_FILE: &str = "cases.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const FINAL_FILE: &str = "final.jsonl";
pub const DELTAS_DIR: &str = "deltas";
/// The evaluated records' case ids in dataset order (how `edit eval merge` orders shards' cases).
pub const ORDER_FILE: &str = "order.json";

/// An open output directory.
pub struct RunDir {
    pub dir: PathBuf,
    cases: File,
    /// Records scored by an earlier run of this evaluation (a resume), as read.
    pub done: Vec<CaseResult>,
    /// Where each of `done` is, by (num_edits, case_id).
    done_index: HashMap<(usize, u64), usize>,
    /// Every record scored so far, `done` and appended.
    keys: BTreeSet<(usize, u64)>,
}

impl RunDir {
    /// Opens `dir` for the run described by `run` (JSON): creates it, or resumes it when it
    /// holds the same run; `force` starts over.
    pub fn open(dir: &Path, run: &Value, force: bool) -> Result<Self> {
        let run_file = dir.join(RUN_FILE);
        if dir.exists() && force {
            // Only an evaluation's own directory is replaced, never an arbitrary one.
            let empty = dir.is_dir() && std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_none();
            if !run_file.is_file() && !empty {
                return Err(Error::Input(format!(
                    "--out {} is not an evaluation directory (no {RUN_FILE}); --force replaces only those. Choose another directory",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut done = Vec::new();
        if dir.exists() {
            if !dir.is_dir() {
                return Err(Error::Input(format!("--out {} is a file; give a directory for the evaluation's results", dir.display())));
            }
            let empty = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_none();
            if !empty {
                let Ok(text) = std::fs::read_to_string(&run_file) else {
                    return Err(Error::Input(format!(
                        "--out {} exists and is not an evaluation directory (no {RUN_FILE}); choose another directory, or pass --force to replace it",
                        dir.display()
                    )));
                };
                let theirs: Value =
                    serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: unreadable ({e}); pass --force to start over", run_file.display())))?;
                if &theirs != run {
                    let differs = differing_keys(&theirs, run);
                    return Err(Error::Input(format!(
                        "--out {} holds another evaluation (it differs in {}); rerun that command to resume it, choose another directory, or pass --force to start over",
                        dir.display(),
                        differs.join(", ")
                    )));
                }
                done = read_cases(&dir.join(CASES_FILE))?;
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_atomic(&run_file, serde_json::to_string_pretty(run).expect("json").as_bytes())?;
        let path = dir.join(CASES_FILE);
        let cases = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let keys = done.iter().map(|c| (c.num_edits, c.case_id)).collect();
        let done_index = done.iter().enumerate().map(|(i, c)| ((c.num_edits, c.case_id), i)).collect();
        if !done.is_empty() {
            tracing::info!("resuming {}: {} record(s) already scored", dir.display(), done.len());
        }
        Ok(Self { dir: dir.to_path_buf(), cases, done, done_index, keys })
    }

    pub fn is_done(&self, num_edits: usize, case_id: u64) -> bool {
        self.keys.contains(&(num_edits, case_id))
    }

    /// The earlier run's result for a record, if it had one.
    pub fn done_case(&self, num_edits: usize, case_id: u64) -> Option<&CaseResult> {
        self.done_index.get(&(num_edits, case_id)).map(|&i| &self.done[i])
    }

    /// Appends one scored record and flushes it to disk.
    pub fn append(&mut self, c: &CaseResult) -> Result<()> {
        let path = self.dir.join(CASES_FILE);
        let mut line = serde_json::to_string(c).expect("json");
        line.push('\n');
        self.cases.write_all(line.as_bytes()).and_then(|_| self.cases.flush()).map_err(|e| Error::io(&path, e))?;
        self.keys.insert((c.num_edits, c.case_id));
        Ok(())
    }

    /// Writes `name` (a JSON value or JSON Lines) whole, through a temporary file.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        write_atomic(&self.dir.join(name), serde_json::to_string_pretty(value).expect("json").as_bytes())
    }

    pub fn write_lines(&self, name: &str, lines: &[Value]) -> Result<()> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        write_atomic(&self.dir.join(name), text.as_bytes())
    }

    /// A JSON Lines file `name` written line by line into a temporary file and put in place
    /// by [`LinesWriter::finish`] (a streamed run's final scores).
    pub fn lines_writer(&self, name: &str) -> Result<LinesWriter> {
        let path = self.dir.join(name);
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(LinesWriter { path, tmp, file: std::io::BufWriter::new(file) })
    }

    /// Where a sequential run keeps chunk `chunk`'s delta for `num_edits` edits per chunk.
    pub fn delta_path(&self, num_edits: usize, chunk: usize) -> PathBuf {
        self.dir.join(DELTAS_DIR).join(format!("{num_edits}-edits-chunk-{chunk:05}.safetensors"))
    }
}

/// See [`RunDir::lines_writer`].
pub struct LinesWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<File>,
}

impl LinesWriter {
    pub fn push(&mut self, line: &Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.tmp, e))
    }

    pub fn finish(mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

/// The top-level keys in which two run descriptions differ.
fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec!["everything".into()] };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// Reads `cases.jsonl`, dropping (and truncating away) a partial last line.
pub(super) fn read_cases(path: &Path) -> Result<Vec<CaseResult>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if complete.len() != text.len() {
        tracing::warn!("{}: dropping a partial last line (the previous run was stopped while writing it)", path.display());
        let f = OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
        f.set_len(complete.len() as u64).map_err(|e| Error::io(path, e))?;
    }
    complete
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Input(format!("{} line {}: not a case record ({e}); pass --force to start over", path.display(), i + 1)))
        })
        .collect()
}
