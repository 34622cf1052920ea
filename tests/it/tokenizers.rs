//! The tokenizer rule every method and evaluation reads positions by (src/tokenizer.rs), on the
//! real Llama 3, Mistral, Qwen 2.5/3 and Gemma 3 tokenizers (tests/fixtures/tokenizers, gzipped):
//! model inputs carry the tokenizer's BOS; a target's ids are exactly the ids that follow the
//! prompt's ids in the tokenization of prompt + target; the subject's last token is where the
//! subject's pieces end in the prompt, BOS or not. The expected ids were read off the tokenizers
//! with the Python `tokenizers` library.

use crate::common;

use std::io::Read;

use edit::editing::positions::subject_input;
use edit::tokenizer::Tokenizer;
use serde_json::Value;

fn load(name: &str, edit_json: impl FnOnce(&mut Value)) -> Tokenizer {
    let dir = common::fixture_dir("tokenizers");
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(dir.join(format!("{name}.tokenizer.json.gz"))).unwrap());
    let mut text = String::new();
    gz.read_to_string(&mut text).unwrap();
    let mut json: Value = serde_json::from_str(&text).unwrap();
    edit_json(&mut json);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.tokenizer_config.json"))).unwrap()).unwrap();
    Tokenizer::from_bytes(json.to_string().as_bytes(), Some(&config)).unwrap()
}

/// The later Llama 3 Hub files: the same tokenizer with `<|begin_of_text|>` put before every text.
fn llama3_with_bos(json: &mut Value) {
    json["post_processor"] = serde_json::json!({"type": "Sequence", "processors": [
        json["post_processor"].clone(),
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}}]});
}

struct Expect {
    name: &'static str,
    tok: Tokenizer,
    bos: &'static [u32],
    /// `"The Eiffel Tower is located in the city of"`: its model input, and ` Rome` after it.
    eiffel: &'static [u32],
    rome: &'static [u32],
    /// ` Buenos Aires` after `"The capital of Argentina is"`.
    buenos_aires: &'static [u32],
}

fn tokenizers() -> Vec<Expect> {
    vec![
        Expect {
            name: "llama-3 (first Hub files: no BOS)",
            tok: load("llama-3", |_| {}),
            bos: &[],
            eiffel: &[791, 469, 3168, 301, 22703, 374, 7559, 304, 279, 3363, 315],
            rome: &[22463],
            buenos_aires: &[69173, 65717],
        },
        Expect {
            name: "llama-3 (later Hub files: <|begin_of_text|>)",
            tok: load("llama-3", llama3_with_bos),
            bos: &[128000],
            eiffel: &[128000, 791, 469, 3168, 301, 22703, 374, 7559, 304, 279, 3363, 315],
            rome: &[22463],
            buenos_aires: &[69173, 65717],
        },
        Expect {
            name: "mistral",
            tok: load("mistral", |_| {}),
            bos: &[1],
            eiffel: &[1, 415, 413, 2728, 301, 19895, 349, 5651, 297, 272, 2990, 302],
            // Alone, " Rome" is [<s>, ▁, ▁Rome]: the prepended ▁ makes a stray piece.
            rome: &[10827],
            buenos_aires: &[25862, 24537],
        },
        Expect {
            name: "qwen3",
            tok: load("qwen3", |_| {}),
            bos: &[],
            eiffel: &[785, 468, 3092, 301, 21938, 374, 7407, 304, 279, 3283, 315],
            rome: &[21718],
            buenos_aires: &[68073, 64617],
        },
        Expect {
            name: "gemma3",
            tok: load("gemma3", |_| {}),
            bos: &[2],
            eiffel: &[2, 818, 94648, 25822, 563, 5628, 528, 506, 3207, 529],
            rome: &[13706],
            buenos_aires: &[44135, 48111],
        },
    ]
}

#[test]
fn model_inputs_and_targets_on_real_tokenizers() {
    for e in tokenizers() {
        let t = &e.tok;
        assert_eq!(t.bos(), e.bos, "{}", e.name);
        let eiffel = "The Eiffel Tower is located in the city of";
        assert_eq!(t.encode_input(eiffel).unwrap(), e.eiffel, "{}", e.name);
        assert_eq!(t.continuation(eiffel, " Rome").unwrap(), e.rome, "{}", e.name);
        assert_eq!(t.continuation("The capital of Argentina is", " Buenos Aires").unwrap(), e.buenos_aires, "{}", e.name);
        // The rule itself: the whole text's input is the prompt's followed by the target's ids.
        for (prompt, target) in [
            (eiffel, " Rome"),
            ("The capital of Argentina is", " Buenos Aires"),
            ("Danielle Darrieux's mother tongue is", " English"),
            ("LeBron James plays", " table tennis"),
        ] {
            let whole = t.encode_input(&format!("{prompt}{target}")).unwrap();
            let cont = t.continuation(prompt, target).unwrap();
            let joined: Vec<u32> = t.encode_input(prompt).unwrap().into_iter().chain(cont.iter().copied()).collect();
            assert_eq!(whole, joined, "{}: {prompt:?} + {target:?}", e.name);
            assert_eq!(t.decode(&cont).unwrap().trim(), target.trim(), "{}", e.name);
        }
    }
    // Why the rule matters: Mistral's own tokenization of " Rome" alone has a stray ▁.
    let mistral = load("mistral", |_| {});
    assert_eq!(mistral.encode(" Rome").unwrap(), [28705, 10827]);
}

#[test]
fn the_subject_ends_where_its_pieces_end_bos_or_not() {
    let templates = [
        ("{} is located in the city of", "The Eiffel Tower"),
        ("The mother tongue of {} is", "Danielle Darrieux"),
        ("{}'s native language is", "Alon Javberg"),
        ("The capital of {} is", "the United States of America"),
        ("{} plays the sport of", "LeBron James"),
        ("In 1990, {} was born in", "Zoë Saldaña"),
    ];
    for e in tokenizers() {
        let t = &e.tok;
        for (template, subject) in templates {
            // Bare, and behind a context prefix as the methods build their prompts.
            for template in [template.to_string(), format!("Yesterday it rained. {template}")] {
                let filled = template.replacen("{}", subject, 1);
                let (ids, last) = subject_input(t, &template, subject).unwrap();
                assert_eq!(ids, t.encode_input(&filled).unwrap(), "{}: {filled:?}", e.name);
                let n = e.bos.len();
                let upto = t.decode(&ids[n..=last]).unwrap();
                let before = t.decode(&ids[n..last]).unwrap();
                assert!(upto.trim_end().ends_with(subject), "{}: {filled:?}: tokens up to {last} decode to {upto:?}", e.name);
                assert!(!before.trim_end().ends_with(subject), "{}: {filled:?}: token {last} is not the subject's last", e.name);
            }
        }
    }
}

/// The fixture tokenizers of the small trained models behave as their REFERENCE.md says.
#[test]
fn fact_llama_tokenizer_as_documented() {
    let t = Tokenizer::from_file(&common::fixture_dir("fact-llama").join("tokenizer.json")).unwrap();
    assert_eq!(t.bos(), [1]);
    assert_eq!(t.encode_input("Alon Javberg was born in").unwrap(), [1, 687, 274, 385, 394, 1738, 327, 1214, 294]);
    assert_eq!(t.encode(" Paris").unwrap(), [1994]);
    assert_eq!(t.encode("Paris").unwrap(), [1994]);
    assert_eq!(t.continuation("Alon Javberg was born in", " Buenos Aires").unwrap(), [2267, 2227]);
    assert_eq!(t.encode_input("").unwrap(), [1]);
    let (_, last) = subject_input(&t, "{}'s native language is", "Alon Javberg").unwrap();
    assert_eq!(last, 5, "the subject's last piece `berg` after <s> ▁Al on ▁J av");
    let gpt = Tokenizer::from_file(&common::fixture_dir("fact-gpt2").join("tokenizer.json")).unwrap();
    assert!(gpt.bos().is_empty());
}
