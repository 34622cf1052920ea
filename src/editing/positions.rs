//! Where the subject is inside a prompt: the reference's `subject_last` rule (spec §1.3).
//!
//! A template holds exactly one `{}` (the subject's place); the text before it, if any, ends with
//! a space, as the reference requires. The subject's tokens are the tokens of the filled prompt's
//! own model input whose characters overlap the subject ([`Tokenizer::span`]): with a BOS token
//! (Llama, Mistral, Gemma) they are counted after it. The reference counts
//! `len(tok(prefix)) + len(tok(" " + subject)) - 1` instead; for byte-level BPE the two agree
//! wherever the subject can be located at all, but a SentencePiece tokenizer puts a `▁` in front
//! of every separately encoded text, which that count would add in.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The subject's place in templates and prompts.
pub const SLOT: &str = "{}";

/// `template` with the subject in its single `{}`, and the subject's byte range in it.
pub fn fill(template: &str, subject: &str) -> Result<(String, Range<usize>)> {
    let slots = template.matches(SLOT).count();
    if slots != 1 {
        return Err(Error::Input(format!("template {template:?} has {slots} \"{{}}\" slots; it must have exactly one, where the subject goes")));
    }
    let at = template.find(SLOT).expect("one slot");
    if at > 0 && !template[..at].ends_with(' ') {
        return Err(Error::Input(format!(
            "template {template:?}: the text before \"{{}}\" must end with a space, because the subject is \
             tokenized as a separate word; put a space before {{}} (\"... of {{}} is\") or start the template with {{}}"
        )));
    }
    if subject.trim().is_empty() {
        return Err(Error::Input(format!("the subject of template {template:?} is empty; give a non-empty subject")));
    }
    Ok((template.replacen(SLOT, subject, 1), at..at + subject.len()))
}

/// The model input of `template` filled with `subject`, and the index in it of the subject's last
/// token.
pub fn subject_input(tok: &Tokenizer, template: &str, subject: &str) -> Result<(Vec<u32>, usize)> {
    let (filled, span) = fill(template, subject)?;
    let (ids, range) = tok.span(&filled, span)?;
    Ok((ids, range.end - 1))
}

/// The index of the subject's last token in the model input of `template` filled with `subject`.
pub fn subject_last_index(tok: &Tokenizer, template: &str, subject: &str) -> Result<usize> {
    subject_input(tok, template, subject).map(|(_, i)| i)
}

/// Checks that the subject can be located in `template` filled with it: one slot after a space,
/// no whitespace around the subject, and a token boundary where the subject ends. Returns the
/// reason when it cannot.
pub fn check_locatable(tok: &Tokenizer, template: &str, subject: &str) -> std::result::Result<(), String> {
    if subject != subject.trim() {
        return Err(format!(
            "the subject {subject:?} cannot be located in {:?}: the subject has leading or trailing whitespace; remove it",
            template.replacen(SLOT, subject, 1)
        ));
    }
    subject_input(tok, template, subject).map(|_| ()).map_err(|e| e.to_string())
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
        (0..ids.len()).find(|&i| tok.decode(&ids[..=i]).unwrap().len() >= end).unwrap()
    }

    #[test]
    fn subject_first_uses_the_subject_as_given() {
        let tok = tok();
        // "LeBron James" -> "Le" "Bron" " James": last token at 2 (GPT-2 BPE).
        assert_eq!(tok.encode("LeBron James").unwrap(), vec![3123, 18760, 3700]);
        assert_eq!(subject_last_index(&tok, "{} plays the sport of", "LeBron James").unwrap(), 2);
        assert_eq!(joint_index(&tok, "{} plays the sport of", "LeBron James"), 2);
        assert_eq!(subject_last_index(&tok, "{} is the capital of", "Paris").unwrap(), 0);
        check_locatable(&tok, "{} plays the sport of", "LeBron James").unwrap();
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
        check_locatable(&tok, t, "Danielle Darrieux").unwrap();
        let t = "The Eiffel Tower, located in the city of {}, is";
        assert_eq!(subject_last_index(&tok, t, "Rome").unwrap(), 11);
        assert_eq!(joint_index(&tok, t, "Rome"), 11);
        check_locatable(&tok, t, "Rome").unwrap();
        // A context prefix in front, as the methods build them.
        let t = "I think so. The mother tongue of {} is";
        assert_eq!(subject_last_index(&tok, t, "Danielle Darrieux").unwrap(), joint_index(&tok, t, "Danielle Darrieux"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        let tok = tok();
        let err = subject_last_index(&tok, "The language of{} is", "X").unwrap_err().to_string();
        assert!(err.contains("must end with a space"), "{err}");
        let err = subject_last_index(&tok, "{} and {}", "X").unwrap_err().to_string();
        assert!(err.contains("2 \"{}\" slots"), "{err}");
        assert!(subject_last_index(&tok, "no slot", "X").is_err());
        assert!(check_locatable(&tok, "of{} is", "X").unwrap_err().contains("must end with a space"));
        assert!(subject_last_index(&tok, "{} is", "").is_err());
        assert!(check_locatable(&tok, "{} is", "").unwrap_err().contains("empty"));
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
