//! Writing files the way a user expects: with the permissions their umask gives, and all-or-
//! nothing. Outputs are written to temporaries beside their targets and renamed into place
//! together by an [`Outputs`] transaction, so a failure anywhere leaves no output behind.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The process umask. Read from `/proc/self/status` where it is there (no race with other
/// threads creating files), else set and restored once.
#[cfg(unix)]
fn umask() -> u32 {
    static MASK: OnceLock<u32> = OnceLock::new();
    *MASK.get_or_init(|| {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(m) = status.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok()) {
                return m;
            }
        }
        // Safety: umask only swaps the process's file-creation mask; restored at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old as u32
        }
    })
}

/// Gives a file written through a temporary (created 0600 by `tempfile`) the permissions a
/// plain `File::create` would have had: 0666 less the umask.
pub fn default_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a safetensors file at `path` (replacing it atomically: safetensors writes a sibling
/// temporary and renames it) with umask permissions.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize_to_file(data, metadata, path).map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    default_permissions(path)
}

/// One tensor of [`write_safetensors_streamed`]: its name, dtype and shape, and how to make it.
pub struct Lazy<'a> {
    pub name: String,
    pub dtype: candle_core::DType,
    pub dims: Vec<usize>,
    pub make: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

impl Lazy<'_> {
    /// An entry for a tensor already made (cloning a tensor shares its storage).
    pub fn ready(name: &str, t: &Tensor) -> Self {
        let t = t.clone();
        Self { name: name.into(), dtype: t.dtype(), dims: t.dims().to_vec(), make: Box::new(move || Ok(t.clone())) }
    }
}

/// Writes a safetensors file (through a temporary beside `path`, renamed into place) whose
/// tensors are made one at a time as their bytes are written, so that a file of many large
/// tensors never needs them all in memory at once. Each made tensor must have its entry's dtype
/// and shape.
pub fn write_safetensors_streamed(path: &Path, tensors: &[Lazy<'_>], metadata: HashMap<String, String>) -> Result<()> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(&metadata).expect("metadata serialises"));
    let mut at = 0usize;
    for t in tensors {
        let bytes = t.dims.iter().product::<usize>() * t.dtype.size_in_bytes();
        let dtype = safetensors_dtype(t.dtype)?;
        header.insert(t.name.clone(), serde_json::json!({ "dtype": dtype, "shape": t.dims, "data_offsets": [at, at + bytes] }));
        at += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let tmp = sibling(path, "tmp");
    let write = || -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 22, file);
        let io = |e| Error::io(&tmp, e);
        out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        for t in tensors {
            let made = (t.make)()?;
            if made.dtype() != t.dtype || made.dims() != t.dims.as_slice() {
                return Err(Error::Internal(format!(
                    "tensor `{}` is {:?} {:?}, not the {:?} {:?} announced",
                    t.name,
                    made.dtype(),
                    made.dims(),
                    t.dtype,
                    t.dims
                )));
            }
            write_tensor_bytes(&made, &mut out).map_err(io)?;
        }
        out.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?.sync_all().map_err(io)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    default_permissions(path)
}

fn safetensors_dtype(dtype: candle_core::DType) -> Result<&'static str> {
    use candle_core::DType;
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        other => return Err(Error::Internal(format!("no safetensors name for {other:?}"))),
    })
}

/// A tensor's elements as little-endian bytes, row-major, in pieces: straight from its storage
/// when it is a contiguous CPU tensor (no copy of a 1 GB sum), else from a copy.
fn write_tensor_bytes(t: &Tensor, out: &mut impl std::io::Write) -> std::io::Result<()> {
    use candle_core::DType;
    fn pieces<T: candle_core::WithDType, const N: usize>(t: &Tensor, out: &mut impl std::io::Write, le: impl Fn(T) -> [u8; N]) -> std::io::Result<()> {
        let write = |v: &[T], out: &mut dyn std::io::Write| -> std::io::Result<()> {
            let mut buf = Vec::with_capacity(1 << 20);
            for chunk in v.chunks(1 << 18) {
                buf.clear();
                for &x in chunk {
                    buf.extend_from_slice(&le(x));
                }
                out.write_all(&buf)?;
            }
            Ok(())
        };
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(all) = T::cpu_storage_as_slice(cpu) {
                return write(&all[start..end], out);
            }
        }
        drop(storage);
        let v: Vec<T> = t.flatten_all().and_then(|f| f.to_vec1()).map_err(std::io::Error::other)?;
        write(&v, out)
    }
    match t.dtype() {
        DType::F32 => pieces::<f32, 4>(t, out, f32::to_le_bytes),
        DType::F64 => pieces::<f64, 8>(t, out, f64::to_le_bytes),
        DType::I64 => pieces::<i64, 8>(t, out, i64::to_le_bytes),
        DType::U32 => pieces::<u32, 4>(t, out, u32::to_le_bytes),
        DType::F16 => pieces::<half::f16, 2>(t, out, half::f16::to_le_bytes),
        DType::BF16 => pieces::<half::bf16, 2>(t, out, half::bf16::to_le_bytes),
        DType::U8 => pieces::<u8, 1>(t, out, |x| [x]),
        other => Err(std::io::Error::other(format!("cannot write {other:?}"))),
    }
}

/// Writes `bytes` to `path` through a temporary beside it, renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Absolute, lexically normalised, with the longest existing prefix canonicalised (symlinks
/// resolved), so that paths that do not exist yet can be compared with ones that do.
pub fn normalize(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut c) = existing.canonicalize() {
            for part in rest.iter().rev() {
                c.push(part);
            }
            return c;
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

/// `<dir>/.<name>.<tag>-<pid>`: a hidden sibling of `target` for its temporary or backup.
pub fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    target.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// The directory that will hold `target`, `.` for a bare file name.
pub fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Checks, before any work, that a file can be written at `target`: not an existing directory,
/// not an existing file unless `overwrite`, and its nearest existing ancestor a writable
/// directory. `flag` names the option in messages.
pub fn check_file_target(target: &Path, overwrite: bool, flag: &str) -> Result<()> {
    if target.file_name().is_none() {
        return Err(Error::Input(format!("{flag} {} is not a file path; name a file, e.g. delta.safetensors", target.display())));
    }
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => {
            return Err(Error::Input(format!("{flag} {} is an existing directory; name a file instead", target.display())));
        }
        Ok(_) if !overwrite => {
            return Err(Error::Input(format!("{} already exists: choose another {flag} or pass --force", target.display())));
        }
        _ => {}
    }
    check_writable_ancestor(parent_dir(target), flag, target)
}

/// The nearest existing ancestor of `dir` must be a directory we can create files in.
pub fn check_writable_ancestor(dir: &Path, flag: &str, target: &Path) -> Result<()> {
    let mut existing = dir.to_path_buf();
    loop {
        match std::fs::metadata(&existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(Error::Input(format!("{flag} {}: {} is a file, not a directory; choose another {flag}", target.display(), existing.display())))
            }
            Err(_) => match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p.to_path_buf(),
                _ => {
                    existing = PathBuf::from(".");
                    break;
                }
            },
        }
    }
    // A probe file proves we may write there (permissions, read-only mounts) before any work.
    match tempfile::Builder::new().prefix(".edit-probe").tempfile_in(&existing) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Input(format!("{flag} {}: cannot write in {} ({e}); choose another {flag}", target.display(), existing.display()))),
    }
}

/// Temporaries of uncommitted outputs, for removal when a signal ends the process.
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn track(p: &Path, live: bool) {
    if let Ok(mut v) = LIVE.lock() {
        if live {
            v.push(p.to_path_buf());
        } else {
            v.retain(|x| x != p);
        }
    }
}

/// Removes the temporaries of every output not yet committed (from a signal handler, before
/// the process exits).
pub fn remove_live_temporaries() {
    if let Ok(v) = LIVE.lock() {
        for p in v.iter() {
            remove_any(p);
        }
    }
}

struct Pending {
    tmp: PathBuf,
    target: PathBuf,
}

/// Temporaries waiting to be renamed onto their targets, all or none. Dropping the transaction
/// without [`Outputs::commit`] removes every temporary.
#[derive(Default)]
pub struct Outputs {
    items: Vec<Pending>,
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

impl Outputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh temporary path for `target` (file or directory), removed on drop unless committed.
    pub fn stage(&mut self, target: &Path) -> Result<PathBuf> {
        let tmp = sibling(target, "tmp");
        remove_any(&tmp);
        std::fs::create_dir_all(parent_dir(target)).map_err(|e| Error::io(parent_dir(target), e))?;
        track(&tmp, true);
        self.items.push(Pending { tmp: tmp.clone(), target: target.to_path_buf() });
        Ok(tmp)
    }

    /// Moves every temporary onto its target. An existing target is moved aside first and
    /// removed only when all renames succeeded; on any failure the old targets are put back.
    pub fn commit(mut self) -> Result<()> {
        let items = std::mem::take(&mut self.items);
        for it in &items {
            track(&it.tmp, false);
        }
        let mut backups: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut placed: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for it in &items {
                if std::fs::symlink_metadata(&it.target).is_ok() {
                    let old = sibling(&it.target, "old");
                    remove_any(&old);
                    std::fs::rename(&it.target, &old).map_err(|e| Error::io(&it.target, e))?;
                    backups.push((old, it.target.clone()));
                }
                std::fs::rename(&it.tmp, &it.target).map_err(|e| Error::io(&it.target, e))?;
                placed.push(it.target.clone());
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (old, _) in backups {
                    remove_any(&old);
                }
                Ok(())
            }
            Err(e) => {
                for p in placed {
                    remove_any(&p);
                }
                for (old, target) in backups {
                    let _ = std::fs::rename(&old, &target);
                }
                for it in &items {
                    remove_any(&it.tmp);
                }
                Err(e)
            }
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for it in &self.items {
            track(&it.tmp, false);
            remove_any(&it.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_commit_all_or_none() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.txt");
        let b = d.path().join("sub").join("b");
        std::fs::write(&a, "old").unwrap();
        {
            let mut o = Outputs::new();
            std::fs::write(o.stage(&a).unwrap(), "new").unwrap();
            std::fs::create_dir_all(o.stage(&b).unwrap()).unwrap();
            // Dropped without commit: nothing changes, no temporaries stay.
        }
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old");
        assert!(!b.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count() + std::fs::read_dir(d.path().join("sub")).unwrap().count(), 2);

        let mut o = Outputs::new();
        std::fs::write(o.stage(&a).unwrap(), "new").unwrap();
        let tb = o.stage(&b).unwrap();
        std::fs::create_dir_all(&tb).unwrap();
        std::fs::write(tb.join("f"), "x").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new");
        assert!(b.join("f").is_file());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "no backups or temporaries left");
    }

    #[test]
    fn failed_commit_restores_old_targets() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.txt");
        std::fs::write(&a, "old").unwrap();
        let mut o = Outputs::new();
        std::fs::write(o.stage(&a).unwrap(), "new").unwrap();
        // The second temporary is never created: its rename fails.
        o.stage(&d.path().join("b.txt")).unwrap();
        assert!(o.commit().is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.safetensors");
        let t = Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        write_safetensors(&p, &[("x".into(), t)], None).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
    }

    #[test]
    fn streamed_files_read_back_as_the_safetensors_crate_reads_them() {
        use candle_core::{DType, Device};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.safetensors");
        let a = Tensor::from_vec((0..12).map(|x| x as f32 * 0.5).collect::<Vec<_>>(), (3, 4), &Device::Cpu).unwrap();
        // A transposed view (not contiguous) is written in its logical, row-major order.
        let t = a.t().unwrap();
        let n = Tensor::new(&[7i64], &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1.5f64, -2.0], 2, &Device::Cpu).unwrap();
        let md: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        write_safetensors_streamed(&p, &[Lazy::ready("t", &t), Lazy::ready("n", &n), Lazy::ready("b", &b)], md).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["k"], "v");
        let read = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        assert_eq!(read["t"].to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        assert_eq!(read["n"].to_vec1::<i64>().unwrap(), vec![7]);
        assert_eq!(read["b"].dtype(), DType::F64);
        assert_eq!(read["b"].to_vec1::<f64>().unwrap(), vec![1.5, -2.0]);
        // A made tensor that is not what was announced is refused, and nothing is left behind.
        let wrong = Lazy { name: "w".into(), dtype: DType::F32, dims: vec![5], make: Box::new(|| Ok(Tensor::zeros(4, DType::F32, &Device::Cpu)?)) };
        assert!(write_safetensors_streamed(&d.path().join("w.safetensors"), &[wrong], HashMap::new()).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
