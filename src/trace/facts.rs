//! The facts `edit trace` reads, and where the subject lies among a prompt's tokens.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One prompt to trace: the subject is a substring of the prompt; `expect`, when given, is the
/// answer the model should predict (the reference traces a fact only when it does).
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    /// `known_id` / `case_id` of the record, as written there (absent for a command-line fact).
    pub id: Option<Value>,
    pub prompt: String,
    pub subject: String,
    pub expect: Option<String>,
}

/// Reads a JSON list of facts in `known_1000.json`'s layout (`known_id`, `prompt` with the
/// subject filled in, `subject`, `attribute`), CounterFact records (`case_id`,
/// `requested_rewrite` {`prompt` with `{}`, `subject`, `target_true.str`}) or edit requests
/// (`prompt` with `{}`, `subject`, optional `target_true`).
pub fn read_facts(path: &Path) -> Result<Vec<Fact>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_facts(&text, &path.display().to_string())
}

pub fn parse_facts(text: &str, source: &str) -> Result<Vec<Fact>> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Input(format!("{source} is not valid JSON: {e}")))?;
    let Value::Array(records) = value else {
        return Err(Error::Input(format!("{source}: expected a JSON list of facts (known_1000.json's layout or CounterFact records)")));
    };
    records.iter().enumerate().map(|(i, r)| fact_from_record(r).map_err(|why| Error::Input(format!("{source}, record {i}: {why}")))).collect()
}

fn fact_from_record(r: &Value) -> std::result::Result<Fact, String> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    if let Some(rw) = r.get("requested_rewrite") {
        let template = text(rw, "prompt").ok_or("requested_rewrite has no `prompt`")?;
        let subject = text(rw, "subject").ok_or("requested_rewrite has no `subject`")?;
        if !template.contains("{}") {
            return Err(format!("requested_rewrite.prompt {template:?} has no {{}} for the subject"));
        }
        let expect = rw.get("target_true").and_then(|t| text(t, "str"));
        return Ok(Fact { id: r.get("case_id").cloned(), prompt: template.replacen("{}", &subject, 1), subject, expect });
    }
    let prompt = text(r, "prompt").ok_or("no `prompt` (known_1000.json's layout) or `requested_rewrite` (CounterFact)")?;
    let subject = text(r, "subject").ok_or("no `subject`")?;
    // An edit request (`edit apply`'s layout): the prompt's `{}` is the subject's place, and its
    // true object (if given) the expected answer.
    if prompt.contains("{}") {
        let expect = text(r, "target_true").or_else(|| r.get("target_true").and_then(|t| text(t, "str")));
        return Ok(Fact { id: r.get("case_id").cloned(), prompt: prompt.replacen("{}", &subject, 1), subject, expect });
    }
    Ok(Fact { id: r.get("known_id").cloned(), prompt, subject, expect: text(r, "attribute") })
}

/// The half-open token range of the first occurrence of `subject`, found as the reference
/// does (`find_token_range`): each token decoded on its own, the pieces joined, and the tokens
/// whose decoded characters cover the subject's (a token that brings the space before the
/// subject starts the range). Lengths are in characters, as Python counts them.
pub fn subject_range(tokens: &[String], subject: &str, prompt: &str) -> Result<(usize, usize)> {
    let whole = tokens.concat();
    let missing = || Error::Input(format!("the subject {subject:?} is not in the prompt {prompt:?} (as its tokens decode)"));
    if subject.is_empty() {
        return Err(Error::Input(format!("the subject of {prompt:?} is empty")));
    }
    let byte = whole.find(subject).ok_or_else(missing)?;
    let start_char = whole[..byte].chars().count();
    let end_char = start_char + subject.chars().count();
    let (mut start, mut loc) = (None, 0);
    for (i, t) in tokens.iter().enumerate() {
        loc += t.chars().count();
        if start.is_none() && loc > start_char {
            start = Some(i);
        }
        if loc >= end_char {
            return Ok((start.ok_or_else(missing)?, i + 1));
        }
    }
    Err(missing())
}

/// The model input of `prompt` and the half-open token range of the first occurrence of
/// `subject` in it: the tokens whose characters overlap the subject's (a token that brings the
/// space before the subject starts the range, one the subject ends inside ends it), BOS or not.
/// The reference (`find_token_range`) finds the same tokens by decoding each token on its own and
/// joining the pieces, which loses the spaces of SentencePiece-style tokens (`▁Paris` decodes to
/// `Paris`) so that a subject of two words is never found; [`subject_range`] is that rule, which
/// this one agrees with on byte-level BPE.
pub fn subject_tokens(tok: &Tokenizer, prompt: &str, subject: &str) -> Result<(Vec<u32>, (usize, usize))> {
    if subject.is_empty() {
        return Err(Error::Input(format!("the subject of {prompt:?} is empty")));
    }
    let at = prompt.find(subject).ok_or_else(|| Error::Input(format!("the subject {subject:?} is not in the prompt {prompt:?}")))?;
    let (ids, range, _) = tok.overlapping(prompt, at..at + subject.len())?;
    Ok((ids, (range.start, range.end)))
}

/// Each token decoded on its own (the reference's `decode_tokens`).
pub fn decode_each(tok: &Tokenizer, ids: &[u32]) -> Result<Vec<String>> {
    ids.iter().map(|&id| tok.decode(&[id])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &[&str]) -> Vec<String> {
        s.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn subject_range_follows_the_reference() {
        // The token carrying the space before the subject starts the range.
        let t = toks(&["The", " native", " language", " of", " Al", "on", " J", "av", "berg", " is"]);
        assert_eq!(subject_range(&t, "Alon Javberg", "").unwrap(), (4, 9));
        // A subject at the start; one inside a token ends the range at that token.
        let t = toks(&["Y", "are", "l", " X", "an", "ell", "i", ",", " a"]);
        assert_eq!(subject_range(&t, "Yarel Xanelli", "").unwrap(), (0, 7));
        assert_eq!(subject_range(&t, "are", "").unwrap(), (1, 2));
        assert_eq!(subject_range(&t, "ar", "").unwrap(), (1, 2));
        // Characters, not bytes: a multi-byte character before the subject.
        let t = toks(&["é", " Paris", " is"]);
        assert_eq!(subject_range(&t, "Paris", "").unwrap(), (1, 2));
        assert!(subject_range(&t, "London", "").is_err());
        assert!(subject_range(&t, "", "").is_err());
    }

    #[test]
    fn facts_from_both_layouts() {
        let text = r#"[
            {"known_id": 7, "subject": "Vinson Massif", "attribute": "Antarctica", "template": "{} is located in the continent", "prediction": " of", "prompt": "Vinson Massif is located in the continent of", "relation_id": "P30"},
            {"case_id": 3, "requested_rewrite": {"prompt": "The native language of {} is", "subject": "Alon Javberg", "target_new": {"str": "Finnish"}, "target_true": {"str": "French"}}}
        ]"#;
        let f = parse_facts(text, "t").unwrap();
        assert_eq!(
            f[0],
            Fact {
                id: Some(7.into()),
                prompt: "Vinson Massif is located in the continent of".into(),
                subject: "Vinson Massif".into(),
                expect: Some("Antarctica".into())
            }
        );
        assert_eq!(
            f[1],
            Fact { id: Some(3.into()), prompt: "The native language of Alon Javberg is".into(), subject: "Alon Javberg".into(), expect: Some("French".into()) }
        );
        let req = parse_facts(r#"[{"prompt": "{} was born in", "subject": "Alon Javberg", "target_new": "Paris", "target_true": "Rome"}]"#, "t").unwrap();
        assert_eq!(req[0], Fact { id: None, prompt: "Alon Javberg was born in".into(), subject: "Alon Javberg".into(), expect: Some("Rome".into()) });
        let err = parse_facts(r#"[{"prompt": "x"}]"#, "t").unwrap_err().to_string();
        assert!(err.contains("record 0") && err.contains("subject"), "{err}");
    }
}
