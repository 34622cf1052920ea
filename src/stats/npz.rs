//! Reading NumPy `.npz` archives, so that covariance statistics precomputed by the
//! reference implementation can be reused instead of recomputed, plus a minimal writer
//! that produces the same layout as `numpy.savez` for tests and caches.
//!
//! The `.npy` parser is written from the NPY format specification. It only understands
//! little-endian numeric types and unicode strings; everything else comes back as
//! [`NpyData::Unsupported`] so that a caller can ignore members it does not need (the
//! reference stats files carry pickled `None` objects next to the arrays that matter).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Bytes staged per read or write, so huge matrices stream instead of being buffered twice.
const CHUNK_BYTES: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Every integer and boolean type, widened; counts are what callers need from these.
    I64(Vec<i64>),
    Str(Vec<String>),
    /// Element type this module does not decode, with numpy's `descr` for diagnostics.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Empty for 0-d (scalar) arrays; data is always in C (row-major) order.
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// Scalar value as f64 (for counts stored as int or float), if numeric and 1 element.
    pub fn scalar_f64(&self) -> Option<f64> {
        match &self.data {
            NpyData::F32(v) if v.len() == 1 => Some(f64::from(v[0])),
            NpyData::F64(v) if v.len() == 1 => Some(v[0]),
            // Counts of samples stay far below 2^53, so the conversion is exact in practice.
            NpyData::I64(v) if v.len() == 1 => Some(v[0] as f64),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a usable zip (.npz) archive: {source}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("npz member `{member}` is not a valid .npy array: {reason}")]
    BadNpy { member: String, reason: String },
    #[error("cannot store array `{name}` in an .npz: {reason}")]
    Unwritable { name: String, reason: String },
}

/// Reads every member of an .npz file, keyed by member name without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let io_err = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let zip_err = |source| NpzError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    let mut out = BTreeMap::new();
    for index in 0..archive.len() {
        let mut member = archive.by_index(index).map_err(zip_err)?;
        if member.is_dir() {
            continue;
        }
        let name = member.name().map_err(zip_err)?.into_owned();
        let declared_len = member.size();
        let array = read_npy(&mut member, declared_len).map_err(|reason| NpzError::BadNpy {
            member: name.clone(),
            reason,
        })?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.insert(key, array);
    }
    Ok(out)
}

/// Writes an uncompressed .npz (as numpy.savez does) — used by tests to create fixtures.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<(), NpzError> {
    let io_err = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let zip_err = |source| NpzError::Zip {
        path: path.to_path_buf(),
        source,
    };
    // Validate everything first so that a bad array does not leave a half-written file.
    let mut encoded = Vec::with_capacity(arrays.len());
    for (name, array) in arrays {
        let (header, data_len) = npy_header(array).map_err(|reason| NpzError::Unwritable {
            name: (*name).to_string(),
            reason,
        })?;
        encoded.push((*name, *array, header, data_len));
    }

    let file = File::create(path).map_err(io_err)?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    for (name, array, header, data_len) in encoded {
        let total = header.len() as u64 + data_len;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            // The zip writer must know up front whether an entry needs zip64 sizes.
            .large_file(total >= zip::ZIP64_BYTES_THR);
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zip_err)?;
        zip.write_all(&header).map_err(io_err)?;
        write_npy_data(&mut zip, &array.data).map_err(io_err)?;
    }
    let mut writer = zip.finish().map_err(zip_err)?;
    writer.flush().map_err(io_err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// .npy decoding

/// Element layouts this module can decode; the rest are reported as unsupported.
#[derive(Debug, Clone, Copy)]
enum Elem {
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// UTF-32LE code units per element.
    Unicode(usize),
}

impl Elem {
    fn from_descr(descr: &str) -> Option<Elem> {
        // One-byte types have no byte order; numpy spells them with `|`, but `<` is harmless.
        let elem = match descr {
            "<f4" => Elem::F32,
            "<f8" => Elem::F64,
            "<i8" => Elem::I64,
            "<i4" => Elem::I32,
            "<i2" => Elem::I16,
            "|i1" | "<i1" => Elem::I8,
            "<u8" => Elem::U64,
            "<u4" => Elem::U32,
            "<u2" => Elem::U16,
            "|u1" | "<u1" => Elem::U8,
            "|b1" | "<b1" => Elem::Bool,
            _ => {
                let chars = descr.strip_prefix("<U")?;
                // Reject signs and other things `parse` would accept but numpy never writes.
                if chars.is_empty() || !chars.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Elem::Unicode(chars.parse().ok()?)
            }
        };
        Some(elem)
    }

    fn item_size(self) -> Option<usize> {
        match self {
            Elem::F64 | Elem::I64 | Elem::U64 => Some(8),
            Elem::F32 | Elem::I32 | Elem::U32 => Some(4),
            Elem::I16 | Elem::U16 => Some(2),
            Elem::I8 | Elem::U8 | Elem::Bool => Some(1),
            Elem::Unicode(chars) => chars.checked_mul(4),
        }
    }
}

/// Parses one `.npy` stream. `declared_len` (the member's uncompressed size) bounds what a
/// header may claim, so a corrupt shape fails cleanly instead of attempting a huge allocation.
fn read_npy<R: Read>(r: &mut R, declared_len: u64) -> Result<NpyArray, String> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble)
        .map_err(|e| short_read(e, "NPY preamble"))?;
    if &preamble[..6] != MAGIC {
        return Err("missing \\x93NUMPY magic string".to_string());
    }
    let (major, minor) = (preamble[6], preamble[7]);
    let (header_len, prefix_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|e| short_read(e, "header length"))?;
            (u64::from(u16::from_le_bytes(b)), 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|e| short_read(e, "header length"))?;
            (u64::from(u32::from_le_bytes(b)), 12u64)
        }
        _ => return Err(format!("unsupported NPY format version {major}.{minor}")),
    };
    if prefix_len + header_len > declared_len {
        return Err(format!(
            "header claims {header_len} bytes but the member holds only {declared_len}"
        ));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    r.read_exact(&mut header_bytes)
        .map_err(|e| short_read(e, "header"))?;
    // Versions 1 and 2 store the header as latin-1; version 3 switched to UTF-8.
    let header: Cow<'_, str> = if major == 3 {
        Cow::Borrowed(
            std::str::from_utf8(&header_bytes)
                .map_err(|_| "header is not valid UTF-8".to_string())?,
        )
    } else {
        Cow::Owned(header_bytes.iter().map(|&b| char::from(b)).collect())
    };
    let header = Header::parse(&header)?;

    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows the address space", header.shape))?;

    let elem = match header.descr.as_str().and_then(Elem::from_descr) {
        Some(elem) => elem,
        None => {
            // Still consume the payload so the zip reader verifies the member's checksum.
            drain(r)?;
            return Ok(NpyArray {
                shape: header.shape,
                data: NpyData::Unsupported(header.descr.to_string()),
            });
        }
    };
    let item_size = elem
        .item_size()
        .ok_or_else(|| format!("item size of {} overflows", header.descr))?;
    let data_len = count
        .checked_mul(item_size)
        .ok_or_else(|| "data size overflows the address space".to_string())?;
    let available = declared_len - prefix_len - header_len;
    if data_len as u64 > available {
        return Err(format!(
            "truncated data: shape {:?} of {} needs {data_len} bytes but only {available} follow the header",
            header.shape, header.descr
        ));
    }

    let data = match elem {
        Elem::F32 => NpyData::F32(read_elems(r, count, f32::from_le_bytes)?),
        Elem::F64 => NpyData::F64(read_elems(r, count, f64::from_le_bytes)?),
        Elem::I64 => NpyData::I64(read_elems(r, count, i64::from_le_bytes)?),
        Elem::I32 => NpyData::I64(read_elems(r, count, |b| i32::from_le_bytes(b).into())?),
        Elem::I16 => NpyData::I64(read_elems(r, count, |b| i16::from_le_bytes(b).into())?),
        Elem::I8 => NpyData::I64(read_elems(r, count, |b| i8::from_le_bytes(b).into())?),
        Elem::U32 => NpyData::I64(read_elems(r, count, |b| u32::from_le_bytes(b).into())?),
        Elem::U16 => NpyData::I64(read_elems(r, count, |b| u16::from_le_bytes(b).into())?),
        Elem::U8 => NpyData::I64(read_elems(r, count, |b| u8::from_le_bytes(b).into())?),
        Elem::Bool => NpyData::I64(read_elems(r, count, |b: [u8; 1]| i64::from(b[0] != 0))?),
        Elem::U64 => {
            let raw = read_elems(r, count, u64::from_le_bytes)?;
            match raw.into_iter().map(i64::try_from).collect() {
                Ok(v) => NpyData::I64(v),
                // Callers can skip an unrepresentable member; failing the whole file would
                // also lose the arrays they do need.
                Err(_) => {
                    NpyData::Unsupported(format!("{} (values exceed the i64 range)", header.descr))
                }
            }
        }
        Elem::Unicode(chars) => NpyData::Str(read_unicode(r, count, chars)?),
    };
    drain(r)?;

    let data = if header.fortran_order && header.shape.len() > 1 {
        let order = fortran_to_c_order(&header.shape);
        match data {
            NpyData::F32(v) => NpyData::F32(order.iter().map(|&i| v[i]).collect()),
            NpyData::F64(v) => NpyData::F64(order.iter().map(|&i| v[i]).collect()),
            NpyData::I64(v) => NpyData::I64(order.iter().map(|&i| v[i]).collect()),
            NpyData::Str(v) => NpyData::Str(order.iter().map(|&i| v[i].clone()).collect()),
            other @ NpyData::Unsupported(_) => other,
        }
    } else {
        data
    };
    Ok(NpyArray {
        shape: header.shape,
        data,
    })
}

fn short_read(e: io::Error, what: &str) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("truncated {what}")
    } else {
        format!("reading {what}: {e}")
    }
}

/// Reads the rest of a member; for zip members this is what triggers the CRC check.
fn drain<R: Read>(r: &mut R) -> Result<(), String> {
    io::copy(r, &mut io::sink())
        .map(|_| ())
        .map_err(|e| format!("reading past the data: {e}"))
}

fn read_elems<R: Read, T, const W: usize>(
    r: &mut R,
    count: usize,
    convert: impl Fn([u8; W]) -> T,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    // A fallible reservation turns an impossible allocation into an error, not an abort.
    out.try_reserve_exact(count)
        .map_err(|_| format!("cannot allocate {count} elements"))?;
    let per_chunk = (CHUNK_BYTES / W).max(1);
    let mut buf = vec![0u8; per_chunk * W];
    let mut remaining = count;
    while remaining > 0 {
        let n = remaining.min(per_chunk);
        let bytes = &mut buf[..n * W];
        r.read_exact(bytes)
            .map_err(|e| short_read(e, "array data"))?;
        out.extend(
            bytes
                .chunks_exact(W)
                .map(|c| convert(c.try_into().expect("chunks_exact yields W bytes"))),
        );
        remaining -= n;
    }
    Ok(out)
}

fn read_unicode<R: Read>(r: &mut R, count: usize, chars: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| format!("cannot allocate {count} strings"))?;
    let mut item = vec![0u8; chars * 4];
    for _ in 0..count {
        r.read_exact(&mut item)
            .map_err(|e| short_read(e, "string data"))?;
        let mut s = String::with_capacity(chars);
        for unit in item.chunks_exact(4) {
            let code = u32::from_le_bytes(unit.try_into().expect("4-byte chunk"));
            let c = char::from_u32(code)
                .ok_or_else(|| format!("invalid code point {code:#x} in string data"))?;
            s.push(c);
        }
        // numpy pads short strings with NULs and strips them again when reading.
        let trimmed = s.trim_end_matches('\0').len();
        s.truncate(trimmed);
        out.push(s);
    }
    Ok(out)
}

/// For each C-order position, the index of that element in Fortran-order storage.
fn fortran_to_c_order(shape: &[usize]) -> Vec<usize> {
    let total: usize = shape.iter().product();
    let mut f_strides = vec![1usize; shape.len()];
    for axis in 1..shape.len() {
        f_strides[axis] = f_strides[axis - 1] * shape[axis - 1];
    }
    let mut order = Vec::with_capacity(total);
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..total {
        order.push(offset);
        // Odometer increment with the last axis fastest, i.e. C order.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            offset += f_strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= f_strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    order
}

// ---------------------------------------------------------------------------------------
// Header: a Python dict literal such as
// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }`

struct Header {
    descr: PyLit,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> Result<Header, String> {
        let mut parser = LitParser {
            src: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value()?;
        parser.skip_ws();
        if parser.pos != parser.src.len() {
            return Err(format!(
                "unexpected text after the header dict at byte {}",
                parser.pos
            ));
        }
        let PyLit::Dict(entries) = value else {
            return Err("header is not a dict".to_string());
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, PyLit::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("header has no '{key}' key"))
        };
        let descr = get("descr")?.clone();
        let fortran_order = match get("fortran_order")? {
            PyLit::Bool(b) => *b,
            other => return Err(format!("'fortran_order' is {other}, not a bool")),
        };
        let shape = match get("shape")? {
            PyLit::Tuple(dims) | PyLit::List(dims) => dims
                .iter()
                .map(|d| match d {
                    PyLit::Int(n) => usize::try_from(*n).map_err(|_| format!("bad dimension {n}")),
                    other => Err(format!("dimension {other} is not an integer")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(format!("'shape' is {other}, not a tuple")),
        };
        Ok(Header {
            descr,
            fortran_order,
            shape,
        })
    }
}

/// The subset of Python literals that NPY headers use. Structured dtypes put lists of
/// tuples in `descr`, so those must parse even though their data is never decoded.
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<PyLit>),
    List(Vec<PyLit>),
    Dict(Vec<(PyLit, PyLit)>),
}

impl PyLit {
    fn as_str(&self) -> Option<&str> {
        match self {
            PyLit::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Python-like repr, so unsupported descrs read the way numpy users know them.
impl fmt::Display for PyLit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, items: &[PyLit]) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        }
        match self {
            PyLit::Str(s) => f.write_str(s),
            PyLit::Int(n) => write!(f, "{n}"),
            PyLit::Bool(true) => f.write_str("True"),
            PyLit::Bool(false) => f.write_str("False"),
            PyLit::None => f.write_str("None"),
            PyLit::Tuple(items) => {
                f.write_str("(")?;
                seq(f, items)?;
                f.write_str(if items.len() == 1 { ",)" } else { ")" })
            }
            PyLit::List(items) => {
                f.write_str("[")?;
                seq(f, items)?;
                f.write_str("]")
            }
            PyLit::Dict(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct LitParser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl LitParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("malformed header: {what} at byte {}", self.pos)
    }

    fn value(&mut self) -> Result<PyLit, String> {
        match self.peek() {
            None => Err(self.error("unexpected end")),
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(PyLit::Dict(entries));
                    }
                    let key = self.value()?;
                    if self.peek() != Some(b':') {
                        return Err(self.error("expected ':'"));
                    }
                    self.pos += 1;
                    let value = self.value()?;
                    entries.push((key, value));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err(self.error("expected ',' or '}'")),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                self.pos += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(if open == b'(' {
                            PyLit::Tuple(items)
                        } else {
                            PyLit::List(items)
                        });
                    }
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {}
                        _ => return Err(self.error("expected ',' or a closing bracket")),
                    }
                }
            }
            Some(quote @ (b'\'' | b'"')) => {
                self.pos += 1;
                let mut bytes = Vec::new();
                loop {
                    let c = *self
                        .src
                        .get(self.pos)
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    if c == quote {
                        break;
                    }
                    if c == b'\\' {
                        // Escapes never occur in the descrs decoded here; keeping the escaped
                        // character verbatim is enough to skip over exotic field names.
                        let next = *self
                            .src
                            .get(self.pos)
                            .ok_or_else(|| self.error("unterminated string"))?;
                        self.pos += 1;
                        bytes.push(next);
                    } else {
                        bytes.push(c);
                    }
                }
                String::from_utf8(bytes)
                    .map(PyLit::Str)
                    .map_err(|_| self.error("string is not valid UTF-8"))
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self.pos < self.src.len() && self.src[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.src[start..self.pos]).expect("ASCII digits");
                let n = text
                    .parse::<i128>()
                    .map_err(|_| self.error("bad integer"))?;
                // Headers written by Python 2 mark longs with a trailing `L`.
                if matches!(self.src.get(self.pos), Some(b'L' | b'l')) {
                    self.pos += 1;
                }
                Ok(PyLit::Int(n))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.src.len() && self.src[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.src[start..self.pos] {
                    b"True" => Ok(PyLit::Bool(true)),
                    b"False" => Ok(PyLit::Bool(false)),
                    b"None" => Ok(PyLit::None),
                    _ => {
                        self.pos = start;
                        Err(self.error("unknown identifier"))
                    }
                }
            }
            Some(_) => Err(self.error("unexpected character")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// .npy encoding

/// numpy sizes a unicode (`<U`) array by its longest string, and never below 1.
fn unicode_width(v: &[String]) -> usize {
    v.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(1)
}

/// Builds the NPY header for `array` and returns it with the payload size in bytes.
fn npy_header(array: &NpyArray) -> Result<(Vec<u8>, u64), String> {
    let count = array
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| "shape overflows".to_string())?;
    let (descr, len, item_size) = match &array.data {
        NpyData::F32(v) => ("<f4".to_string(), v.len(), 4),
        NpyData::F64(v) => ("<f8".to_string(), v.len(), 8),
        NpyData::I64(v) => ("<i8".to_string(), v.len(), 8),
        NpyData::Str(v) => {
            let chars = unicode_width(v);
            (format!("<U{chars}"), v.len(), chars * 4)
        }
        NpyData::Unsupported(descr) => {
            return Err(format!("element type {descr} cannot be encoded"));
        }
    };
    if len != count {
        return Err(format!(
            "shape {:?} holds {count} elements but the data has {len}",
            array.shape
        ));
    }
    let shape = match array.shape.as_slice() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 2.0 exists only so headers can outgrow a u16 length; numpy pads the header
    // with spaces and a final newline so the payload starts 64-byte aligned.
    let padded_len = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        unpadded.next_multiple_of(64) - prefix
    };
    let mut out = MAGIC.to_vec();
    let header_len = match u16::try_from(padded_len(10)) {
        Ok(len) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            usize::from(len)
        }
        Err(_) => {
            let len = padded_len(12);
            let len32 = u32::try_from(len).map_err(|_| "header too long".to_string())?;
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&len32.to_le_bytes());
            len
        }
    };
    let header_start = out.len();
    out.extend_from_slice(dict.as_bytes());
    out.resize(header_start + header_len - 1, b' ');
    out.push(b'\n');
    let data_len = (count as u64)
        .checked_mul(item_size as u64)
        .ok_or_else(|| "data size overflows".to_string())?;
    Ok((out, data_len))
}

fn write_npy_data<W: Write>(w: &mut W, data: &NpyData) -> io::Result<()> {
    fn chunked<W: Write, T: Copy, const N: usize>(
        w: &mut W,
        values: &[T],
        to_bytes: impl Fn(T) -> [u8; N],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        for chunk in values.chunks((CHUNK_BYTES / N).max(1)) {
            buf.clear();
            for &v in chunk {
                buf.extend_from_slice(&to_bytes(v));
            }
            w.write_all(&buf)?;
        }
        Ok(())
    }
    match data {
        NpyData::F32(v) => chunked(w, v, f32::to_le_bytes),
        NpyData::F64(v) => chunked(w, v, f64::to_le_bytes),
        NpyData::I64(v) => chunked(w, v, i64::to_le_bytes),
        NpyData::Str(v) => {
            let chars = unicode_width(v);
            let mut buf = Vec::with_capacity(chars * 4);
            for s in v {
                buf.clear();
                for c in s.chars() {
                    buf.extend_from_slice(&u32::from(c).to_le_bytes());
                }
                buf.resize(chars * 4, 0);
                w.write_all(&buf)?;
            }
            Ok(())
        }
        NpyData::Unsupported(_) => unreachable!("rejected by npy_header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique path under the system temp dir, removed on drop, so the tests need no
    /// extra crates.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("npz-test-{}-{n}-{tag}.npz", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn arr(shape: &[usize], data: NpyData) -> NpyArray {
        NpyArray {
            shape: shape.to_vec(),
            data,
        }
    }

    fn round_trip(arrays: &[(&str, &NpyArray)]) -> BTreeMap<String, NpyArray> {
        let tmp = TempPath::new("rt");
        write_npz(&tmp.0, arrays).unwrap();
        read_npz(&tmp.0).unwrap()
    }

    #[test]
    fn round_trip_preserves_types_shapes_and_values() {
        let matrix = arr(
            &[2, 3],
            NpyData::F32(vec![0.1, -2.5, f32::MIN_POSITIVE, f32::MAX, -0.0, 1e-45]),
        );
        let count = arr(&[], NpyData::I64(vec![i64::MIN + 1]));
        let count_f = arr(&[], NpyData::F64(vec![1234.5]));
        let name = arr(&[], NpyData::Str(vec!["SecondMoment€".to_string()]));
        let names = arr(
            &[3],
            NpyData::Str(vec!["a".into(), "".into(), "xyz".into()]),
        );
        let empty = arr(&[0, 4], NpyData::F64(vec![]));
        let got = round_trip(&[
            ("mom2.mom2", &matrix),
            ("mom2.count", &count),
            ("count_f", &count_f),
            ("mom2.constructor", &name),
            ("names", &names),
            ("empty", &empty),
        ]);
        assert_eq!(got.len(), 6);
        assert_eq!(got["mom2.mom2"], matrix);
        assert_eq!(got["mom2.count"], count);
        assert_eq!(got["count_f"], count_f);
        assert_eq!(got["mom2.constructor"], name);
        assert_eq!(got["names"], names);
        assert_eq!(got["empty"], empty);
        assert_eq!(got["mom2.count"].scalar_f64(), Some((i64::MIN + 1) as f64));
        assert_eq!(got["count_f"].scalar_f64(), Some(1234.5));
        assert_eq!(got["mom2.mom2"].scalar_f64(), None);
        assert_eq!(got["mom2.constructor"].scalar_f64(), None);
        if let NpyData::F32(v) = &got["mom2.mom2"].data {
            // -0.0 == 0.0, so compare bits to be sure nothing was normalised.
            assert_eq!(v[4].to_bits(), (-0.0f32).to_bits());
        }
    }

    #[test]
    fn written_headers_follow_numpy_layout() {
        let (header, data_len) = npy_header(&arr(&[3, 3], NpyData::F32(vec![0.0; 9]))).unwrap();
        assert_eq!(header.len() % 64, 0);
        assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(
            usize::from(u16::from_le_bytes([header[8], header[9]])),
            header.len() - 10
        );
        let text = std::str::from_utf8(&header[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(data_len, 36);
        let (header, _) = npy_header(&arr(&[5], NpyData::I64(vec![0; 5]))).unwrap();
        assert!(std::str::from_utf8(&header[10..])
            .unwrap()
            .contains("'shape': (5,), }"));
        let (header, _) = npy_header(&arr(&[], NpyData::Str(vec![String::new()]))).unwrap();
        assert!(std::str::from_utf8(&header[10..])
            .unwrap()
            .contains("'descr': '<U1'"));

        // A header too long for a u16 length must switch to format version 2.0.
        let many_dims = arr(&[1; 22_000], NpyData::F32(vec![2.5]));
        let (header, _) = npy_header(&many_dims).unwrap();
        assert_eq!(&header[6..8], &[2, 0]);
        assert_eq!(header.len() % 64, 0);
        let got = round_trip(&[("many", &many_dims)]);
        assert_eq!(got["many"], many_dims);
    }

    #[test]
    fn writer_rejects_inconsistent_or_undecodable_arrays() {
        let tmp = TempPath::new("bad");
        let wrong_len = arr(&[2, 2], NpyData::F32(vec![1.0; 3]));
        let err = write_npz(&tmp.0, &[("x", &wrong_len)]).unwrap_err();
        assert!(
            matches!(err, NpzError::Unwritable { ref name, .. } if name == "x"),
            "{err}"
        );
        let object = arr(&[], NpyData::Unsupported("|O".into()));
        assert!(matches!(
            write_npz(&tmp.0, &[("o", &object)]),
            Err(NpzError::Unwritable { .. })
        ));
    }

    /// Wraps hand-made `.npy` bytes in a zip, for cases the writer cannot produce.
    fn npz_with_member(tmp: &TempPath, name: &str, bytes: &[u8]) {
        let file = File::create(&tmp.0).unwrap();
        let mut zip = ZipWriter::new(file);
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
        zip.finish().unwrap();
    }

    fn npy_bytes(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if version == 1 { 10 } else { 12 };
        let mut header = dict.to_string();
        let pad = (64 - (prefix + header.len() + 1) % 64) % 64;
        header.push_str(&" ".repeat(pad));
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn fortran_order_is_transposed_to_c_order() {
        // Logical [[1, 2, 3], [4, 5, 6]] stored column by column.
        let data: Vec<u8> = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let npy = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        let tmp = TempPath::new("fortran");
        npz_with_member(&tmp, "m.npy", &npy);
        let got = read_npz(&tmp.0).unwrap();
        assert_eq!(
            got["m"],
            arr(&[2, 3], NpyData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        );
    }

    #[test]
    fn fortran_order_handles_higher_ranks() {
        // Element (i, j, k) of a 2x3x4 array lives at i + 2j + 6k in Fortran storage.
        let order = fortran_to_c_order(&[2, 3, 4]);
        let mut expected = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    expected.push(i + 2 * j + 6 * k);
                }
            }
        }
        assert_eq!(order, expected);
        assert_eq!(fortran_to_c_order(&[3, 0]), Vec::<usize>::new());
    }

    #[test]
    fn header_parser_accepts_numpy_variants() {
        let h = Header::parse("{'descr': '<i8', 'fortran_order': False, 'shape': (2L, 3L), }  ")
            .unwrap();
        assert_eq!(h.shape, [2, 3]);
        let h = Header::parse(r#"{"shape": [], "fortran_order": True, "descr": "<f8"}"#).unwrap();
        assert!(h.fortran_order && h.shape.is_empty());
        let h = Header::parse(
            "{'descr': [('a', '<f4'), ('b', '<i8', (2,))], 'fortran_order': False, 'shape': (1,), }",
        )
        .unwrap();
        assert_eq!(h.descr.to_string(), "[(a, <f4), (b, <i8, (2,))]");
        assert!(Header::parse("{'descr': '<f4', 'shape': (1,)}").is_err());
        assert!(Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}").is_err());
        assert!(Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)").is_err());
        assert!(Header::parse("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}").is_err());
    }

    #[test]
    fn unsupported_members_are_reported_not_fatal() {
        let tmp = TempPath::new("unsupported");
        let file = File::create(&tmp.0).unwrap();
        let mut zip = ZipWriter::new(file);
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        let members: [(&str, Vec<u8>); 3] = [
            (
                "obj.npy",
                npy_bytes(
                    1,
                    "{'descr': '|O', 'fortran_order': False, 'shape': (), }",
                    b"\x80\x03N.",
                ),
            ),
            (
                "huge.npy",
                npy_bytes(
                    1,
                    "{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }",
                    &u64::MAX.to_le_bytes(),
                ),
            ),
            (
                "ok.npy",
                npy_bytes(
                    1,
                    "{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
                    &7i64.to_le_bytes(),
                ),
            ),
        ];
        for (name, bytes) in &members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        let got = read_npz(&tmp.0).unwrap();
        assert_eq!(got["obj"], arr(&[], NpyData::Unsupported("|O".into())));
        assert_eq!(
            got["huge"].data,
            NpyData::Unsupported("<u8 (values exceed the i64 range)".into())
        );
        assert_eq!(got["ok"].scalar_f64(), Some(7.0));
    }

    #[test]
    fn truncated_inputs_are_errors_not_panics() {
        let tmp = TempPath::new("trunc");
        let matrix = arr(&[4, 4], NpyData::F32((0..16).map(|i| i as f32).collect()));
        write_npz(&tmp.0, &[("m", &matrix)]).unwrap();
        let bytes = std::fs::read(&tmp.0).unwrap();
        // Cut the archive at many points: none may panic, all must fail.
        for cut in [
            0,
            1,
            4,
            30,
            100,
            bytes.len() / 2,
            bytes.len() - 23,
            bytes.len() - 1,
        ] {
            std::fs::write(&tmp.0, &bytes[..cut]).unwrap();
            assert!(read_npz(&tmp.0).is_err(), "cut at {cut} was accepted");
        }

        // A well-formed zip whose .npy payload is shorter than its header promises.
        let npy = npy_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 3), }",
            &[0; 40],
        );
        npz_with_member(&tmp, "short.npy", &npy);
        let err = read_npz(&tmp.0).unwrap_err();
        assert!(
            matches!(&err, NpzError::BadNpy { member, reason } if member == "short.npy" && reason.contains("truncated")),
            "{err}"
        );
        for cut in [3, 9, 20] {
            npz_with_member(&tmp, "short.npy", &npy[..cut]);
            assert!(matches!(read_npz(&tmp.0), Err(NpzError::BadNpy { .. })));
        }
        npz_with_member(&tmp, "junk.npy", b"PK not numpy at all");
        assert!(matches!(read_npz(&tmp.0), Err(NpzError::BadNpy { .. })));

        // Same size, flipped payload byte: only the zip CRC can notice.
        write_npz(&tmp.0, &[("m", &matrix)]).unwrap();
        let mut corrupt = bytes.clone();
        let data_at = corrupt
            .windows(4)
            .position(|w| w == 7.0f32.to_le_bytes())
            .unwrap();
        corrupt[data_at] ^= 1;
        std::fs::write(&tmp.0, &corrupt).unwrap();
        assert!(matches!(read_npz(&tmp.0), Err(NpzError::BadNpy { .. })));

        let missing = TempPath::new("missing");
        assert!(matches!(read_npz(&missing.0), Err(NpzError::Io { .. })));
    }

    /// A small base64 decoder, so the fixture below can stay compact without extra crates.
    fn base64_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
        let mut out = Vec::with_capacity(digits.len() * 3 / 4);
        for group in digits.chunks(4) {
            let mut acc = 0u32;
            for (i, &d) in group.iter().enumerate() {
                acc |= u32::from(d) << (18 - 6 * i);
            }
            let bytes = acc.to_be_bytes();
            out.extend_from_slice(&bytes[1..group.len()]);
        }
        out
    }

    /// Built independently of this module, with Python 3.11's standard library only:
    /// `zipfile` plus `.npy` bytes written by hand from the NPY format specification
    /// (version 1.0 headers padded to 64 bytes). `mom2.mom2` and `mom2.count` are stored
    /// with forced zip64 local headers exactly as `numpy.savez` writes them; the other
    /// members are deflated (as `numpy.savez_compressed` does). Members:
    ///   mom2.mom2        <f4 (3, 3)  [0.1, -2.5, 1e-8, FLT_MAX, -0.0, 1.5, 2**-149, 7, -1e5]
    ///   mom2.count       <i8 ()      123456789012
    ///   mom2.constructor <U5 ()      "naïve"
    ///   mom2.none        |O  ()      pickle.dumps(None, protocol=3)
    ///   sample_size      <i8 ()      100000
    ///   fort             <f8 (2, 3)  fortran_order True, logical [[1, 2, 3], [4, 5, 6]]
    ///   strs             <U3 (3,)    ["a", "xyz", "€"]
    ///   flags            |b1 (3,)    [True, False, True]
    ///   i4               <i4 (4,)    [-1, 0, 2**31 - 1, -2**31]
    ///   u8               <u8 (2,)    [0, 2**63 - 1]
    ///   be               >f4 (2,)    [1.0, 2.0]
    ///   v2               <f4 (1,)    [1.0], NPY format version 2.0
    const PYTHON_FIXTURE: &[&str] = &[
        "UEsDBC0AAAAAAAAAIQBZUz8W//////////8NABQAbW9tMi5tb20yLm5weQEAEACkAAAAAAAAAKQAAAAAAAAAk05VTVBZAQB2",
        "AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsIDMpLCB9ICAgICAgICAgICAg",
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIArNzMw9AAAgwHfMKzL//39/AAAAgAAAwD8B",
        "AAAAAADgQABQw8dQSwMELQAAAAAAAAAhALJUO9L//////////w4AFABtb20yLmNvdW50Lm5weQEAEACIAAAAAAAAAIgAAAAA",
        "AAAAk05VTVBZAQB2AHsnZGVzY3InOiAnPGk4JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKCksIH0gICAg",
        "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoUGpm+HAAAAFBLAwQU",
        "AAAACAAAACEAX5akNlAAAACUAAAAFAAAAG1vbTIuY29uc3RydWN0b3IubnB5m+wX6hsQychQxlCtnpJanFykbqWgbhNqqq6j",
        "oJ6WX1RSlJgXn1+UkgoSd0vMKU4FihdnJBakAvkamjoKtQoUAa48BgaGRCB+D8RlQJwKxABQSwMEFAAAAAgAAAAhAMo4O9pF",
        "AAAAhAAAAA0AAABtb20yLm5vbmUubnB5m+wX6hsQychQxlCtnpJanFykbqWgXuOvrqOgnpZfVFKUmBefX5SSChJ2S8wpTgWK",
        "F2ckFqQC+RqaOgq1CpQBrgZmPz0AUEsDBBQAAAAIAAAAIQDbWuLsSAAAAIgAAAAPAAAAc2FtcGxlX3NpemUubnB5m+wX6hsQ",
        "ychQxlCtnpJanFykbqWgbpNpoa6joJ6WX1RSlJgXn1+UkgoSd0vMKU4FihdnJBakAvkamjoKtQoUAa4FbYwMIAAAUEsDBBQA",
        "AAAIAAAAIQALJ2DbWQAAALAAAAAIAAAAZm9ydC5ucHmb7BfqGxDJyFDGUK2eklqcXKRupaBuk2ahrqOgnpZfVFKUmBefX5SS",
        "ChIPKSpNBQoXZyQWpAK5GkY6CsaaOgq1CuQDLgYw+GAPoQUcIDQDlBaB0hxQWsIBAFBLAwQUAAAACAAAACEAiR8JZFMAAACk",
        "AAAACAAAAHN0cnMubnB5m+wX6hsQychQxlCtnpJanFykbqWgbhNqrK6joJ6WX1RSlJgXn1+UkgoSd0vMKU4FihdnJBakAvka",
        "xjqaOgq1ChQArkQGBKgA4kogrgLiNQoIcQBQSwMEFAAAAAgAAAAhABaTjLtHAAAAgwAAAAkAAABmbGFncy5ucHmb7BfqGxDJ",
        "yFDGUK2eklqcXKRupaBek2SorqOgnpZfVFKUmBefX5SSChJ3S8wpTgWKF2ckFqQC+RrGOpo6CrUKFAAuRgZGAFBLAwQUAAAA",
        "CAAAACEAjDfsyk8AAACQAAAABgAAAGk0Lm5weZvsF+obEMnIUMZQrZ6SWpxcpG6loG6TaaKuo6Cell9UUpSYF59flJIKEndL",
        "zClOBYoXZyQWpAL5GiY6mjoKtQoUAK7/QMAABECqHkg1AABQSwMEFAAAAAgAAAAhABR4ngZKAAAAkAAAAAYAAAB1OC5ucHmb",
        "7BfqGxDJyFDGUK2eklqcXKRupaBuU2qhrqOgnpZfVFKUmBefX5SSChJ3S8wpTgWKF2ckFqQC+RpGOpo6CrUKFAAuBij4DwH1",
        "AFBLAwQUAAAACAAAACEAGZ92ZUwAAACIAAAABgAAAGJlLm5weZvsF+obEMnIUMZQrZ6SWpxcpG6loG6XZqKuo6Cell9UUpSY",
        "F59flJIKEndLzClOBYoXZyQWpAL5GkY6mjoKtQoUAC77BgYGBwYGBgBQSwMEFAAAAAgAAAAhAM1MX2ZKAAAAhAAAAAYAAAB2",
        "Mi5ucHmb7BfqGxDJxFDCwMBQrZ6SWpxcpG6loG6TZqKuo6Cell9UUpSYF59flJIKEndLzClOBYoXZyQWpAL5GoY6mjoKtQpk",
        "Ay4GhgZ7AFBLAQItAy0AAAAAAAAAIQBZUz8WpAAAAKQAAAANAAAAAAAAAAAAAACAAQAAAABtb20yLm1vbTIubnB5UEsBAi0D",
        "LQAAAAAAAAAhALJUO9KIAAAAiAAAAA4AAAAAAAAAAAAAAIAB4wAAAG1vbTIuY291bnQubnB5UEsBAhQDFAAAAAgAAAAhAF+W",
        "pDZQAAAAlAAAABQAAAAAAAAAAAAAAIABqwEAAG1vbTIuY29uc3RydWN0b3IubnB5UEsBAhQDFAAAAAgAAAAhAMo4O9pFAAAA",
        "hAAAAA0AAAAAAAAAAAAAAIABLQIAAG1vbTIubm9uZS5ucHlQSwECFAMUAAAACAAAACEA21ri7EgAAACIAAAADwAAAAAAAAAA",
        "AAAAgAGdAgAAc2FtcGxlX3NpemUubnB5UEsBAhQDFAAAAAgAAAAhAAsnYNtZAAAAsAAAAAgAAAAAAAAAAAAAAIABEgMAAGZv",
        "cnQubnB5UEsBAhQDFAAAAAgAAAAhAIkfCWRTAAAApAAAAAgAAAAAAAAAAAAAAIABkQMAAHN0cnMubnB5UEsBAhQDFAAAAAgA",
        "AAAhABaTjLtHAAAAgwAAAAkAAAAAAAAAAAAAAIABCgQAAGZsYWdzLm5weVBLAQIUAxQAAAAIAAAAIQCMN+zKTwAAAJAAAAAG",
        "AAAAAAAAAAAAAACAAXgEAABpNC5ucHlQSwECFAMUAAAACAAAACEAFHieBkoAAACQAAAABgAAAAAAAAAAAAAAgAHrBAAAdTgu",
        "bnB5UEsBAhQDFAAAAAgAAAAhABmfdmVMAAAAiAAAAAYAAAAAAAAAAAAAAIABWQUAAGJlLm5weVBLAQIUAxQAAAAIAAAAIQDN",
        "TF9mSgAAAIQAAAAGAAAAAAAAAAAAAACAAckFAAB2Mi5ucHlQSwUGAAAAAAwADACkAgAANwYAAAAA",
    ];

    #[test]
    fn reads_fixture_built_by_python_stdlib() {
        let tmp = TempPath::new("python");
        std::fs::write(&tmp.0, base64_decode(&PYTHON_FIXTURE.concat())).unwrap();
        let got = read_npz(&tmp.0).unwrap();
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "be",
                "flags",
                "fort",
                "i4",
                "mom2.constructor",
                "mom2.count",
                "mom2.mom2",
                "mom2.none",
                "sample_size",
                "strs",
                "u8",
                "v2"
            ]
        );

        let mom2 = &got["mom2.mom2"];
        assert_eq!(mom2.shape, [3, 3]);
        let NpyData::F32(values) = &mom2.data else {
            panic!("mom2.mom2 decoded as {:?}", mom2.data);
        };
        // Bit patterns from Python: struct.unpack("<I", struct.pack("<f", v)).
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            bits,
            [
                0x3dcc_cccd,
                0xc020_0000,
                0x322b_cc77,
                0x7f7f_ffff,
                0x8000_0000,
                0x3fc0_0000,
                0x0000_0001,
                0x40e0_0000,
                0xc7c3_5000
            ]
        );

        assert_eq!(
            got["mom2.count"],
            arr(&[], NpyData::I64(vec![123_456_789_012]))
        );
        assert_eq!(got["mom2.count"].scalar_f64(), Some(123_456_789_012.0));
        assert_eq!(
            got["mom2.constructor"],
            arr(&[], NpyData::Str(vec!["naïve".into()]))
        );
        assert_eq!(
            got["mom2.none"],
            arr(&[], NpyData::Unsupported("|O".into()))
        );
        assert_eq!(got["sample_size"].scalar_f64(), Some(100_000.0));
        assert_eq!(
            got["fort"],
            arr(&[2, 3], NpyData::F64(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        );
        assert_eq!(
            got["strs"],
            arr(
                &[3],
                NpyData::Str(vec!["a".into(), "xyz".into(), "€".into()])
            )
        );
        assert_eq!(got["flags"], arr(&[3], NpyData::I64(vec![1, 0, 1])));
        assert_eq!(
            got["i4"],
            arr(
                &[4],
                NpyData::I64(vec![-1, 0, 2_147_483_647, -2_147_483_648])
            )
        );
        assert_eq!(got["u8"], arr(&[2], NpyData::I64(vec![0, i64::MAX])));
        assert_eq!(got["be"], arr(&[2], NpyData::Unsupported(">f4".into())));
        assert_eq!(got["v2"], arr(&[1], NpyData::F32(vec![1.0])));
    }
}
