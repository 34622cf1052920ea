//! A dataset file read a few records at a time (`edit eval --stream`), for files too large to
//! hold whole (WikiBigEdit's 500k updates, UltraEditBench's 2M): a JSON array is split at its
//! top-level elements as the bytes arrive, JSON Lines (or a single object) value by value; each
//! element is parsed on its own, so memory holds one batch of records.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use super::{detect, records_from_values, resolve_zsre_target, Dataset, DatasetFormat, ZsreTarget};
use crate::error::{Error, Result};

/// The records of a dataset file, a batch at a time.
pub struct RecordReader {
    input: BufReader<File>,
    array: bool,
    source: String,
    /// Records handed out so far (the next batch's first index).
    position: usize,
    /// Values read from the file so far (the next one's index, for messages).
    read: usize,
    /// Records handed out at most (`--limit`).
    limit: usize,
    done: bool,
    /// The first record, read to detect the layout, not yet handed out.
    first: Option<Value>,
    pub format: DatasetFormat,
    pub zsre_target: Option<ZsreTarget>,
}

impl RecordReader {
    /// Opens `path` and reads its first record to detect the layout.
    pub fn open(path: &Path, zsre_target: Option<ZsreTarget>) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let source = path.display().to_string();
        skip_whitespace(&mut input, &source)?;
        let array = peek(&mut input, &source)? == Some(b'[');
        if array {
            input.consume(1);
        }
        let mut reader = RecordReader {
            input,
            array,
            source,
            position: 0,
            read: 0,
            limit: usize::MAX,
            done: false,
            first: None,
            format: DatasetFormat::Requests,
            zsre_target: None,
        };
        let Some(first) = reader.next_value()? else {
            return Err(Error::Input(format!("{} holds no records", reader.source)));
        };
        reader.format = detect(&first);
        super::check_known(&first, reader.format, &reader.source)?;
        reader.zsre_target = resolve_zsre_target(reader.format, zsre_target);
        reader.first = Some(first);
        Ok(reader)
    }

    /// Hands out only the first `limit` records (all when `None`).
    pub fn with_limit(mut self, limit: Option<usize>) -> Self {
        self.limit = limit.unwrap_or(usize::MAX);
        self
    }

    /// The next (at most) `n` records, read as [`super::read_dataset`] reads them (record
    /// indices and default case ids count from the file's start); `None` at the end.
    pub fn next_batch(&mut self, n: usize) -> Result<Option<Dataset>> {
        match self.next_values(n)? {
            Some((offset, values)) => self.parse(offset, &values).map(Some),
            None => Ok(None),
        }
    }

    /// The next (at most) `n` records as JSON values, with the index of the first; an error
    /// only for a file that is not valid JSON (or JSON Lines), after which nothing more can be read.
    pub fn next_values(&mut self, n: usize) -> Result<Option<(usize, Vec<Value>)>> {
        let n = n.min(self.limit - self.position);
        let mut values = Vec::with_capacity(n);
        if n > 0 {
            if let Some(first) = self.first.take() {
                values.push(first);
            }
        }
        while values.len() < n {
            match self.next_value()? {
                Some(v) => values.push(v),
                None => break,
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        let offset = self.position;
        self.position += values.len();
        Ok(Some((offset, values)))
    }

    /// Records `values`, read from index `offset` on, in the file's layout.
    pub fn parse(&self, offset: usize, values: &[Value]) -> Result<Dataset> {
        let records = records_from_values(values, &self.source, self.format, self.zsre_target, offset)?;
        Ok(Dataset { format: self.format, records, zsre_target: self.zsre_target })
    }

    /// One top-level value, or `None` at the end of the file (or of the array).
    fn next_value(&mut self) -> Result<Option<Value>> {
        if self.done {
            return Ok(None);
        }
        skip_whitespace(&mut self.input, &self.source)?;
        let index = self.read;
        if self.array {
            if peek(&mut self.input, &self.source)? == Some(b',') && index > 0 {
                self.input.consume(1);
                skip_whitespace(&mut self.input, &self.source)?;
            }
            if matches!(peek(&mut self.input, &self.source)?, Some(b']') | None) {
                self.done = true;
                return Ok(None);
            }
            let bytes = element_bytes(&mut self.input, &self.source)?;
            self.read += 1;
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Input(format!("{}: record {index} is not valid JSON ({e})", self.source)));
        }
        if peek(&mut self.input, &self.source)?.is_none() {
            self.done = true;
            return Ok(None);
        }
        let mut values = serde_json::Deserializer::from_reader(&mut self.input).into_iter::<Value>();
        match values.next() {
            Some(Ok(v)) => {
                self.read += 1;
                Ok(Some(v))
            }
            Some(Err(e)) => Err(Error::Input(format!("{}: record {index} is not valid JSON ({e})", self.source))),
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

fn peek(input: &mut BufReader<File>, source: &str) -> Result<Option<u8>> {
    let buf = input.fill_buf().map_err(|e| Error::io(Path::new(source), e))?;
    Ok(buf.first().copied())
}

fn skip_whitespace(input: &mut BufReader<File>, source: &str) -> Result<()> {
    while let Some(b) = peek(input, source)? {
        if !b.is_ascii_whitespace() {
            break;
        }
        input.consume(1);
    }
    Ok(())
}

/// The bytes of one array element: an object or array up to its matching close (strings and
/// their escapes skipped), or a scalar up to the next `,` or `]`.
fn element_bytes(input: &mut BufReader<File>, source: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut byte = [0u8];
    loop {
        if !in_string && depth == 0 && !out.is_empty() {
            // A scalar ends before the separator; a container ended at its close.
            if matches!(out.first(), Some(b'{') | Some(b'[')) {
                return Ok(out);
            }
            if matches!(peek(input, source)?, Some(b',') | Some(b']') | None) {
                return Ok(out);
            }
        }
        if input.read(&mut byte).map_err(|e| Error::io(Path::new(source), e))? == 0 {
            return Err(Error::Input(format!("{source}: the file ends inside a record (a truncated JSON array?)")));
        }
        let b = byte[0];
        out.push(b);
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(text: &str) -> (tempfile::TempDir, Result<RecordReader>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(&path, text).unwrap();
        let r = RecordReader::open(&path, None);
        (dir, r)
    }

    fn all(r: &mut RecordReader, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        while let Some(d) = r.next_batch(n).unwrap() {
            assert!(d.records.len() <= n);
            out.extend(d.records.into_iter().map(|x| (x.case_id, x.request.subject, x.request.target_new)));
        }
        out
    }

    const RECORD: &str = r#"{"prompt": "Q{i}", "rephrase_prompt": "R", "ans": "A{i}", "loc": "L", "loc_ans": "B"}"#;

    #[test]
    fn arrays_and_json_lines_split_into_the_records_a_whole_read_gives() {
        // Strings holding brackets, braces, commas, escaped quotes and backslashes; nested values; odd spacing.
        let tricky = r#"{"prompt": "a ] } , [ {\"q\" \\", "rephrase_prompt": "R", "ans": "x\\\"]", "loc": "L", "loc_ans": "B", "extra": [1, {"k": "]"}]}"#;
        let records: Vec<String> = (0..7).map(|i| RECORD.replace("{i}", &i.to_string())).chain([tricky.to_string()]).collect();
        let array = format!("\n [ {} ]\n", records.join(" ,\n  "));
        let lines = records.join("\n") + "\n";
        let whole = super::super::parse_dataset(&array, "d", None).unwrap();
        let want: Vec<(u64, String, String)> = whole.records.into_iter().map(|x| (x.case_id, x.request.subject, x.request.target_new)).collect();
        assert_eq!(want.len(), 8);
        assert_eq!(want[7].1, "a ] } , [ {\"q\" \\");
        for text in [&array, &lines] {
            for n in [1, 3, 8, 100] {
                let (_d, r) = reader(text);
                let mut r = r.unwrap();
                assert_eq!(r.format, DatasetFormat::UltraEditBench);
                assert_eq!(all(&mut r, n), want, "batches of {n}");
            }
        }
        // A single object, not in a list.
        let (_d, r) = reader(&records[0]);
        assert_eq!(all(&mut r.unwrap(), 4).len(), 1);
    }

    #[test]
    fn bad_files_are_named() {
        let (_d, r) = reader("[]");
        assert!(r.err().unwrap().to_string().contains("holds no records"));
        let (_d, r) = reader(&format!("[{}, {}", RECORD, RECORD.replace("}", "")));
        let e = r.unwrap().next_batch(10).err().unwrap().to_string();
        assert!(e.contains("ends inside a record"), "{e}");
        let (_d, r) = reader(&format!("[{}, {{\"prompt\": oops}}]", RECORD));
        let e = r.unwrap().next_batch(10).err().unwrap().to_string();
        assert!(e.contains("record 1 is not valid JSON"), "{e}");
        let (_d, r) = reader(&format!("{}\n{{\"prompt\": \"Q\"}}\n", RECORD));
        let mut r = r.unwrap();
        let e = r.next_batch(10).err().unwrap().to_string();
        assert!(e.contains("record 1") && e.contains("rephrase_prompt"), "{e}");
        let (_d, r) = reader(r#"[{"question": "Q?"}]"#);
        assert!(r.err().unwrap().to_string().contains("Known layouts"));
    }
}
