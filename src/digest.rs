//! SHA-256 digests of whole files, remembered by path, size and modification time so a large
//! file (a corpus, a checkpoint shard) is read once. Below every layer that names data by its
//! content: corpora (`data`), weights (`checkpoint::fingerprint`), datasets and MEND imports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// SHA-256 of a file's bytes, lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Digests kept in a JSON file, keyed by canonical path, with the size and modification time
/// (nanoseconds) they were taken at: a file rewritten since (edit writes through a temporary
/// and a rename, so its time changes) is hashed again. A file without a readable modification
/// time is always hashed.
pub struct DigestMemo {
    path: PathBuf,
    entries: BTreeMap<String, (u64, u128, String)>,
    dirty: bool,
}

/// Where a file stands against the memo: its canonical key, size and time.
struct Stamp {
    key: String,
    canon: PathBuf,
    len: u64,
    mtime: u128,
}

impl DigestMemo {
    /// The memo in `path`; a missing or unreadable one starts empty.
    pub fn open(path: PathBuf) -> Self {
        let entries = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        Self { path, entries, dirty: false }
    }

    fn stamp(file: &Path) -> Result<Stamp> {
        let canon = file.canonicalize().map_err(|e| Error::io(file, e))?;
        let meta = std::fs::metadata(&canon).map_err(|e| Error::io(file, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(Stamp { key: canon.to_string_lossy().into_owned(), canon, len: meta.len(), mtime })
    }

    fn remembered(&self, s: &Stamp) -> Option<String> {
        match self.entries.get(&s.key) {
            Some((len, m, d)) if *len == s.len && *m == s.mtime && s.mtime != 0 => Some(d.clone()),
            _ => None,
        }
    }

    pub fn digest(&mut self, file: &Path) -> Result<String> {
        Ok(self.digests(std::slice::from_ref(&file.to_path_buf()))?.remove(0))
    }

    /// Digests of `files` in order; those not remembered are hashed in parallel (the shards
    /// of a sharded checkpoint).
    pub fn digests(&mut self, files: &[PathBuf]) -> Result<Vec<String>> {
        let stamps = files.iter().map(|f| Self::stamp(f)).collect::<Result<Vec<_>>>()?;
        let known: Vec<Option<String>> = stamps.iter().map(|s| self.remembered(s)).collect();
        let fresh: Vec<Option<String>> = stamps
            .par_iter()
            .zip(known.par_iter())
            .map(|(s, k)| if k.is_some() { Ok(None) } else { file_sha256(&s.canon).map(Some) })
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(files.len());
        for ((s, k), f) in stamps.into_iter().zip(known).zip(fresh) {
            match (k, f) {
                (Some(d), _) => out.push(d),
                (None, Some(d)) => {
                    self.entries.insert(s.key, (s.len, s.mtime, d.clone()));
                    self.dirty = true;
                    out.push(d);
                }
                (None, None) => unreachable!("every file not remembered was hashed"),
            }
        }
        Ok(out)
    }

    /// Writes the memo back (through a temporary and a rename), dropping files that no longer
    /// exist. Best effort: a memo that cannot be written only costs a re-hash next time.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.entries.retain(|k, _| Path::new(k).exists());
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(crate::fsutil::parent_dir(&self.path))?;
            let tmp = crate::fsutil::sibling(&self.path, "tmp");
            std::fs::write(&tmp, serde_json::to_string(&self.entries).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::debug!("cannot remember file digests in {}: {e}", self.path.display());
        }
    }
}

/// edit's own cache directory: `$XDG_CACHE_HOME/edit`, else `~/.cache/edit`.
pub fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("edit")
}

/// The memo of weight files' digests: `$EDIT_DIGESTS`, else `<cache home>/weight-digests.json`.
pub fn weights_memo_path() -> PathBuf {
    match std::env::var_os("EDIT_DIGESTS") {
        Some(p) => PathBuf::from(p),
        None => cache_home().join("weight-digests.json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_a_rewritten_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, b"abc").unwrap();
        let memo_path = dir.path().join("memo.json");
        let mut memo = DigestMemo::open(memo_path.clone());
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(memo.digest(&file).unwrap(), abc);
        memo.save();
        // A remembered digest is returned without reading the file: plant a wrong one to see it.
        let mut planted: BTreeMap<String, (u64, u128, String)> = serde_json::from_str(&std::fs::read_to_string(&memo_path).unwrap()).unwrap();
        planted.values_mut().for_each(|e| e.2 = "remembered".into());
        std::fs::write(&memo_path, serde_json::to_string(&planted).unwrap()).unwrap();
        assert_eq!(DigestMemo::open(memo_path.clone()).digest(&file).unwrap(), "remembered");
        // Rewritten through a rename (a new size and time): hashed again.
        let tmp = dir.path().join("a.tmp");
        std::fs::write(&tmp, b"abcd").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let d = DigestMemo::open(memo_path).digest(&file).unwrap();
        assert_eq!(d, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
    }

    #[test]
    fn files_gone_are_dropped_from_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"1").unwrap();
        std::fs::write(&b, b"2").unwrap();
        let memo_path = dir.path().join("memo.json");
        let mut memo = DigestMemo::open(memo_path.clone());
        assert_eq!(memo.digests(&[a.clone(), b.clone()]).unwrap().len(), 2);
        std::fs::remove_file(&b).unwrap();
        memo.save();
        let kept: BTreeMap<String, (u64, u128, String)> = serde_json::from_str(&std::fs::read_to_string(&memo_path).unwrap()).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept.keys().next().unwrap().ends_with("/a"));
    }
}
