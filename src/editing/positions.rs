//! Where the subject ends inside a prompt: the reference's `subject_last` rule (spec §1.3).
//!
//! A template holds exactly one `{}` (the subject's place). The reference splits it there and
//! tokenizes the parts separately: when the text before `{}` is non-empty it must end in a space,
//! that space is dropped from the prefix and moved onto the subject (`" " + subject.trim()`), so
//! the subject is tokenized as a word of its own; with nothing before `{}` the subject is used as
//! given. The subject's last token is then at `len(tok(prefix)) + len(tok(word)) - 1`.
//!
//! This only equals the position in the tokenization of the whole filled prompt when byte-level
//! BPE does not merge across the boundaries; [`check_locatable`] verifies that.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The subject's place in templates and prompts.
pub const SLOT: &str = "{}";

/// A template split at its `{}` the way the reference does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectSplit {
    /// The text before `{}`, without the one trailing space (empty when `{}` starts the template).
    pub prefix: String,
    /// What is tokenized for the subject: `" " + subject.trim()` after a non-empty prefix, else
    /// the subject unchanged.
    pub word: String,
    /// The text after `{}`.
    pub suffix: String,
}

/// Splits `template` at its single `{}` and forms the subject word (spec §1.3, steps 1-2).
pub fn split(template: &str, subject: &str) -> Result<SubjectSplit> {
    let slots = template.matches(SLOT).count();
    if slots != 1 {
        return Err(Error::Input(format!(
            "template {template:?} has {slots} \"{{}}\" slots; it must have exactly one, where the subject goes"
        )));
    }
    let at = template.find(SLOT).expect("one slot");
    let (prefix, suffix) = (&template[..at], &template[at + SLOT.len()..]);
    if prefix.is_empty() {
        return Ok(SubjectSplit {
            prefix: String::new(),
            word: subject.to_string(),
            suffix: suffix.to_string(),
        });
    }
    let Some(stripped) = prefix.strip_suffix(' ') else {
        return Err(Error::Input(format!(
            "template {template:?}: the text before \"{{}}\" must end with a space, because the subject is \
             tokenized as a separate word; put a space before {{}} (\"... of {{}} is\") or start the template with {{}}"
        )));
    };
    Ok(SubjectSplit {
        prefix: stripped.to_string(),
        word: format!(" {}", subject.trim()),
        suffix: suffix.to_string(),
    })
}

/// Token index of the subject's last token in `template` filled with `subject` (the reference's
/// `subject_last`): `len(tok(prefix)) + len(tok(word)) - 1`.
pub fn subject_last_index(tok: &Tokenizer, template: &str, subject: &str) -> Result<usize> {
    let parts = split(template, subject)?;
    let n_prefix = if parts.prefix.is_empty() {
        0
    } else {
        tok.encode(&parts.prefix)?.len()
    };
    let n_word = tok.encode(&parts.word)?.len();
    if n_word == 0 {
        return Err(Error::Input(format!(
            "subject {subject:?} encodes to no tokens in template {template:?}; give a non-empty subject"
        )));
    }
    Ok(n_prefix + n_word - 1)
}

/// [`subject_last_index`] for several templates with the same subject.
pub fn subject_last_indices(tok: &Tokenizer, templates: &[String], subject: &str) -> Result<Vec<usize>> {
    templates.iter().map(|t| subject_last_index(tok, t, subject)).collect()
}

/// Checks that the subject-last index of [`subject_last_index`] points at the subject's last
/// token in the tokenization of the whole filled text `template.replace("{}", subject)`, i.e.
/// that the separately tokenized prefix and word are exactly the first tokens of the whole text.
/// Returns the reason when they are not (BPE merged across a boundary, the subject encodes to no
/// tokens, or the text before `{}` does not end in a space).
pub fn check_locatable(tok: &Tokenizer, template: &str, subject: &str) -> std::result::Result<(), String> {
    let parts = split(template, subject).map_err(|e| e.to_string())?;
    let encode = |text: &str| tok.encode(text).map_err(|e| e.to_string());
    let prefix_ids = if parts.prefix.is_empty() {
        Vec::new()
    } else {
        encode(&parts.prefix)?
    };
    let word_ids = encode(&parts.word)?;
    if word_ids.is_empty() {
        return Err(format!(
            "subject {subject:?} encodes to no tokens; give a non-empty subject"
        ));
    }
    let separate: Vec<u32> = prefix_ids.iter().chain(&word_ids).copied().collect();
    let filled = template.replacen(SLOT, subject, 1);
    let whole = encode(&filled)?;
    if whole.starts_with(&separate) {
        return Ok(());
    }
    let pieces = |ids: &[u32]| -> String {
        ids.iter()
            .map(|&id| {
                tok.decode(&[id])
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|_| format!("<{id}>"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let n = separate.len().min(whole.len());
    let hint = if subject != subject.trim() {
        "the subject has leading or trailing whitespace; remove it"
    } else {
        "the subject's tokens merge with the text next to it; put a space or punctuation between the \
         subject and the surrounding text"
    };
    Err(format!(
        "the subject cannot be located in {filled:?}: tokenized on its own the text up to the subject's end is \
         [{}], but inside the whole prompt it is [{}]; {hint}",
        pieces(&separate),
        pieces(&whole[..n])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tok() -> Tokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2/tokenizer.json");
        Tokenizer::from_file(&path).unwrap()
    }

    /// The index of the subject's last token found directly in the joint tokenization, by
    /// decoding growing prefixes of the whole text until they cover the text up to the subject's end.
    fn joint_index(tok: &Tokenizer, template: &str, subject: &str) -> usize {
        let at = template.find("{}").unwrap();
        let end = template[..at].len() + subject.len();
        let filled = template.replace("{}", subject);
        let ids = tok.encode(&filled).unwrap();
        (0..ids.len())
            .find(|&i| tok.decode(&ids[..=i]).unwrap().len() >= end)
            .unwrap()
    }

    #[test]
    fn subject_first_uses_the_subject_as_given() {
        let tok = tok();
        // "LeBron James" -> "Le" "Bron" " James": last token at 2 (GPT-2 BPE).
        assert_eq!(tok.encode("LeBron James").unwrap(), vec![3123, 18760, 3700]);
        assert_eq!(
            subject_last_index(&tok, "{} plays the sport of", "LeBron James").unwrap(),
            2
        );
        assert_eq!(joint_index(&tok, "{} plays the sport of", "LeBron James"), 2);
        assert_eq!(subject_last_index(&tok, "{} is the capital of", "Paris").unwrap(), 0);
        check_locatable(&tok, "{} plays the sport of", "LeBron James").unwrap();
        let s = split("{} plays", " X ").unwrap();
        assert_eq!(
            (s.prefix.as_str(), s.word.as_str(), s.suffix.as_str()),
            ("", " X ", " plays")
        );
    }

    #[test]
    fn subject_inside_gets_a_leading_space() {
        let tok = tok();
        // "The mother tongue of" = 4 tokens, " Danielle Darrieux" = " Danielle" " Dar" "rie" "ux": 4 + 4 - 1.
        assert_eq!(tok.encode("The mother tongue of").unwrap(), vec![464, 2802, 11880, 286]);
        assert_eq!(tok.encode(" Danielle Darrieux").unwrap(), vec![39808, 7491, 5034, 2821]);
        let t = "The mother tongue of {} is";
        assert_eq!(subject_last_index(&tok, t, "Danielle Darrieux").unwrap(), 7);
        assert_eq!(joint_index(&tok, t, "Danielle Darrieux"), 7);
        // The subject is trimmed after a prefix.
        assert_eq!(split(t, "  Danielle Darrieux ").unwrap().word, " Danielle Darrieux");
        check_locatable(&tok, t, "Danielle Darrieux").unwrap();
        let t = "The Eiffel Tower, located in the city of {}, is";
        assert_eq!(subject_last_index(&tok, t, "Rome").unwrap(), 11);
        assert_eq!(joint_index(&tok, t, "Rome"), 11);
        check_locatable(&tok, t, "Rome").unwrap();
        // A context prefix in front, as the methods build them.
        let t = "I think so. The mother tongue of {} is";
        assert_eq!(
            subject_last_index(&tok, t, "Danielle Darrieux").unwrap(),
            joint_index(&tok, t, "Danielle Darrieux")
        );
    }

    #[test]
    fn bad_templates_are_rejected() {
        let tok = tok();
        let err = subject_last_index(&tok, "The language of{} is", "X")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must end with a space"), "{err}");
        let err = subject_last_index(&tok, "{} and {}", "X").unwrap_err().to_string();
        assert!(err.contains("2 \"{}\" slots"), "{err}");
        assert!(subject_last_index(&tok, "no slot", "X").is_err());
        assert!(check_locatable(&tok, "of{} is", "X")
            .unwrap_err()
            .contains("must end with a space"));
        assert!(subject_last_index(&tok, "{} is", "").is_err());
        assert!(check_locatable(&tok, "{} is", "").unwrap_err().contains("no tokens"));
    }

    #[test]
    fn merges_across_the_boundary_are_detected() {
        let tok = tok();
        // "American" + "s" tokenizes jointly as the one token "Americans": the subject's end is not a
        // token boundary.
        assert_eq!(tok.encode("Americans").unwrap().len(), 1);
        let why = check_locatable(&tok, "{}s are people", "American").unwrap_err();
        assert!(why.contains("cannot be located"), "{why}");
        // Leading whitespace in the subject: the reference trims it for the word, not in the prompt.
        let why = check_locatable(&tok, "The sport of {} is", " LeBron James").unwrap_err();
        assert!(why.contains("whitespace"), "{why}");
        // Possessives split off by the pre-tokenizer are fine.
        check_locatable(&tok, "{}'s sport is", "LeBron James").unwrap();
    }
}
