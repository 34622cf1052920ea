//! Safetensors checkpoints: one file or a sharded index, with the key quirks of the published
//! files (GPT-2 keys without `transformer.`, old `attn.bias` buffers). Headers are read through
//! a memory map (which touches only their pages); each tensor's bytes are read from the file
//! straight into the tensor's own buffer. A memory-mapped load would copy every page into the
//! tensors while keeping the mapped pages resident too: twice the weights' size, and slower
//! (one page fault per 4 KiB).
//!
//! Models never see file names: they ask a [`WeightBuilder`] for tensors by their canonical
//! (reference) name and shape, and the builder resolves, checks and converts them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Where each tensor lives and what it looks like, without loading data.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub file: usize,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Where its bytes are in the file (absolute offsets).
    pub bytes: std::ops::Range<u64>,
}

pub struct Checkpoint {
    files: Vec<PathBuf>,
    handles: Vec<std::fs::File>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    pub fn open_files(files: Vec<PathBuf>) -> Result<Self> {
        let mut handles = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            if !path.is_file() {
                return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "weight file not found")));
            }
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // Safety: read-only mapping, used for the header only; like every mmap-based reader
            // we rely on nobody truncating the file while we run.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (n, header) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::BadSafetensors { path: path.clone(), reason: e.to_string() })?;
            let start = 8 + n as u64;
            for (name, info) in header.tensors() {
                let (a, b) = info.data_offsets;
                tensors.insert(name, TensorInfo { file: i, dtype: info.dtype, shape: info.shape.clone(), bytes: start + a as u64..start + b as u64 });
            }
            handles.push(file);
        }
        Ok(Self { files, handles, tensors })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Finds the stored key for a canonical name: itself, or without the family prefix
    /// (the Hub's `gpt2*` files drop `transformer.`).
    pub fn resolve(&self, canonical: &str, prefix: &str) -> Option<&str> {
        if let Some((k, _)) = self.tensors.get_key_value(canonical) {
            return Some(k);
        }
        let stripped = canonical.strip_prefix(prefix)?;
        self.tensors.get_key_value(stripped).map(|(k, _)| k.as_str())
    }

    /// The storage dtype most tensors use (for `inspect`).
    pub fn storage_dtype(&self) -> Option<safetensors::Dtype> {
        let mut counts: HashMap<String, (usize, safetensors::Dtype)> = HashMap::new();
        for info in self.tensors.values() {
            let e = counts.entry(format!("{:?}", info.dtype)).or_insert((0, info.dtype));
            e.0 += info.shape.iter().product::<usize>();
        }
        counts.into_values().max_by_key(|(n, _)| *n).map(|(_, d)| d)
    }

    fn file_name(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }

    fn load_raw(&self, key: &str, device: &Device) -> Result<Tensor> {
        use safetensors::Dtype as S;
        use std::io::{Read, Seek, SeekFrom};
        let info = &self.tensors[key];
        let path = &self.files[info.file];
        let dtype = match info.dtype {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F64 => DType::F64,
            other => return Err(Error::UnsupportedDtype { name: key.to_string(), file: self.file_name(info.file), dtype: format!("{other:?}") }),
        };
        let len = (info.bytes.end - info.bytes.start) as usize;
        let elems: usize = info.shape.iter().product();
        if len != elems * dtype.size_in_bytes() {
            return Err(Error::BadSafetensors { path: path.clone(), reason: format!("tensor `{key}`: {len} bytes for {elems} {dtype:?} values") });
        }
        let mut f = &self.handles[info.file];
        let mut read = |buf: &mut [u8]| f.seek(SeekFrom::Start(info.bytes.start)).and_then(|_| f.read_exact(buf)).map_err(|e| Error::io(path, e));
        let t = if dtype == DType::F32 && cfg!(target_endian = "little") {
            // Read straight into the tensor's buffer: no second copy.
            let mut values = vec![0f32; elems];
            // Safety: any byte pattern is a valid f32, and the slice covers exactly the Vec.
            read(unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) })?;
            Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; len];
            read(&mut bytes)?;
            Tensor::from_raw_buffer(&bytes, dtype, &info.shape, &Device::Cpu)?
        };
        Ok(t.to_device(device)?)
    }
}

/// Where a builder takes its tensors from: a checkpoint on disk or tensors in memory
/// (benchmarks and tests build random models without writing files).
pub enum WeightSource {
    Checkpoint(Checkpoint),
    Memory(HashMap<String, Tensor>),
}

/// Name-scoped access to weights, mirroring the checkpoint's key hierarchy
/// (`vb.pp("h").pp(3).get(...)` in candle terms). Converts to the compute dtype.
#[derive(Clone)]
pub struct WeightBuilder<'a> {
    source: &'a WeightSource,
    prefix: &'static str,
    path: Vec<String>,
    dtype: DType,
    device: &'a Device,
}

impl<'a> WeightBuilder<'a> {
    pub fn new(source: &'a WeightSource, family_prefix: &'static str, dtype: DType, device: &'a Device) -> Self {
        Self { source, prefix: family_prefix, path: Vec::new(), dtype, device }
    }

    pub fn pp(&self, part: impl ToString) -> Self {
        let mut b = self.clone();
        b.path.push(part.to_string());
        b
    }

    pub fn name(&self, leaf: &str) -> String {
        let mut parts = self.path.clone();
        parts.push(leaf.to_string());
        parts.join(".")
    }

    pub fn contains(&self, leaf: &str) -> bool {
        let name = self.name(leaf);
        match self.source {
            WeightSource::Checkpoint(c) => c.resolve(&name, self.prefix).is_some(),
            WeightSource::Memory(m) => m.contains_key(&name),
        }
    }

    /// Loads `leaf` under the current scope, checking its shape.
    pub fn get(&self, shape: &[usize], leaf: &str) -> Result<Tensor> {
        let name = self.name(leaf);
        let t = match self.source {
            WeightSource::Checkpoint(c) => {
                let Some(key) = c.resolve(&name, self.prefix) else {
                    return Err(Error::MissingTensor { name, files: c.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ") });
                };
                let info = &c.tensors[key];
                if info.shape != shape {
                    return Err(Error::ShapeMismatch { name, file: c.file_name(info.file), expected: shape.to_vec(), found: info.shape.clone() });
                }
                c.load_raw(key, self.device)?
            }
            WeightSource::Memory(m) => {
                let t = m.get(&name).ok_or_else(|| Error::MissingTensor { name: name.clone(), files: "in-memory weights".into() })?;
                if t.dims() != shape {
                    return Err(Error::ShapeMismatch { name, file: "in-memory weights".into(), expected: shape.to_vec(), found: t.dims().to_vec() });
                }
                t.to_device(self.device)?
            }
        };
        Ok(t.to_dtype(self.dtype)?)
    }
}

/// 64-bit FNV-1a: a small, stable, dependency-free hash for fingerprints (not for security).
pub struct Fnv64(u64);

impl Fnv64 {
    pub fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// Metadata key of weight files written by `edit`: the fingerprint of the weights they were
/// first edited from.
pub const EDIT_BASE_KEY: &str = "edit.base";

/// A safetensors file's `__metadata__` (empty when it has none), read from its header only.
pub fn file_metadata(path: &std::path::Path) -> Result<HashMap<String, String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Safety: read-only mapping of the header; like every mmap-based loader we rely on nobody
    // truncating the file while we run.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Metadata key of a shard rewritten by `edit` listing the ids of the deltas applied to it,
/// oldest first (`revert` checks a model really holds a delta; AlphaEdit's state, that it is
/// the model its last kept edit was applied to).
pub const EDIT_APPLIED_KEY: &str = "edit.applied";

/// One file's `edit.applied` list (empty when it has none).
pub fn applied_list(metadata: &HashMap<String, String>) -> Vec<String> {
    metadata.get(EDIT_APPLIED_KEY).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default()
}

/// What `edit` recorded in a model's weight files, each file's metadata read once: the
/// fingerprint of the weights it was first edited from (`edit.base`, in any file), and the
/// deltas applied since, oldest first (`edit.applied`: the longest list the files record; files
/// never rewritten record none).
pub fn edit_records(files: &[PathBuf]) -> Result<(Option<String>, Vec<String>)> {
    let (mut base, mut applied) = (None, Vec::new());
    for path in files {
        let mut metadata = file_metadata(path)?;
        let ids = applied_list(&metadata);
        if ids.len() > applied.len() {
            applied = ids;
        }
        if base.is_none() {
            base = metadata.remove(EDIT_BASE_KEY);
        }
    }
    Ok((base, applied))
}

/// Lower-case hex of `bytes` (digests in names and metadata).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identifies a set of weights by their whole content: the SHA-256 over every file's size and
/// SHA-256, 64 hex digits. The files' digests are remembered by path, size and modification time
/// (`digest::weights_memo_path`), so a checkpoint is read in full once, not at every command.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    use sha2::Digest;
    let mut memo = crate::digest::DigestMemo::open(crate::digest::weights_memo_path());
    let lens = files.iter().map(|f| Ok(std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len())).collect::<Result<Vec<u64>>>()?;
    let total: u64 = lens.iter().sum();
    let started = std::time::Instant::now();
    let digests = memo.digests(files)?;
    if started.elapsed().as_secs_f64() > 1.0 {
        tracing::info!("hashed the weights ({:.1} GB) in {:.1} s; remembered for the next command", total as f64 / 1e9, started.elapsed().as_secs_f64());
    }
    memo.save();
    let mut h = sha2::Sha256::new();
    for (len, d) in lens.iter().zip(&digests) {
        h.update(len.to_le_bytes());
        h.update(d.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// Whether a recorded fingerprint is of the sampled kind edit wrote before weights were hashed
/// in full (16 hex digits; statistics files, deltas, MEND networks, AlphaEdit states and edited
/// models' `edit.base` from then carry it).
pub fn is_sampled_fingerprint(fp: &str) -> bool {
    fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sampled fingerprint edit recorded before full hashing: every file's size and safetensors
/// header plus 64 windows of its data. Kept only to recognise what was recorded with it; two
/// checkpoints differing in a few tensors can share it, which is why it was replaced.
pub fn sampled_fingerprint(files: &[PathBuf]) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Fnv64::new();
    for path in files {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        h.write(&len.to_le_bytes());
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
        let header_len = u64::from_le_bytes(n).min(len.saturating_sub(8)).min(100 << 20);
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        h.write(&header);
        let data_start = 8 + header_len;
        if len > data_start + 64 {
            let span = len - data_start - 64;
            let mut buf = [0u8; 64];
            for i in 0..64u64 {
                f.seek(SeekFrom::Start(data_start + span * i / 63)).map_err(|e| Error::io(path, e))?;
                f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
                h.write(&buf);
            }
        }
    }
    Ok(format!("{:016x}", h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two checkpoints that differ in one weight away from the 64 sampled windows: the sampled
    /// fingerprint (what statistics and deltas were checked by before) cannot tell them apart,
    /// the full one does.
    #[test]
    fn weights_differing_in_one_value_have_different_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let original = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/model.safetensors");
        let bytes = std::fs::read(&original).unwrap();
        let a = dir.path().join("a.safetensors");
        std::fs::write(&a, &bytes).unwrap();
        // The middle of the data, between two sampled windows (they are len/63 apart and 64 long).
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let span = bytes.len() - header - 64;
        let at = header + span * 31 / 63 + span / 126;
        let mut changed = bytes.clone();
        changed[at] ^= 0x01;
        let b = dir.path().join("b.safetensors");
        std::fs::write(&b, &changed).unwrap();
        assert_eq!(sampled_fingerprint(std::slice::from_ref(&a)).unwrap(), sampled_fingerprint(std::slice::from_ref(&b)).unwrap());
        let (fa, fb) = (fingerprint(std::slice::from_ref(&a)).unwrap(), fingerprint(&[b]).unwrap());
        assert_ne!(fa, fb);
        assert_eq!(fa.len(), 64);
        assert!(!is_sampled_fingerprint(&fa));
        assert!(is_sampled_fingerprint(&sampled_fingerprint(std::slice::from_ref(&a)).unwrap()));
        // The same bytes under another name: the same fingerprint (content, not path).
        let c = dir.path().join("c.safetensors");
        std::fs::copy(&a, &c).unwrap();
        assert_eq!(fingerprint(&[c]).unwrap(), fa);
    }
}
