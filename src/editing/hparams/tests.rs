use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::editing::alphaedit::AlphaEditHparams;
use crate::editing::emmet::EmmetHparams;
use crate::editing::ft::FtHparams;
use crate::editing::memit::MemitHparams;
use crate::editing::mend::MendHparams;
use crate::editing::rome::RomeHparams;
use crate::editing::ultraedit::UltraEditHparams;

fn gpt2(n_layer: usize, d: usize) -> ModelConfig {
    ModelConfig::from_json(
        &json!({"model_type": "gpt2", "n_embd": d, "n_head": 4, "n_layer": n_layer, "vocab_size": 50257, "n_positions": 1024}),
        Path::new("c"),
    )
    .unwrap()
}

#[test]
fn method_names() {
    assert_eq!("MEMIT".parse::<Method>().unwrap(), Method::Memit);
    assert_eq!("ft".parse::<Method>().unwrap(), Method::Ft);
    assert_eq!(Method::Rome.name(), "rome");
    assert_eq!("mend".parse::<Method>().unwrap(), Method::Mend);
    assert!("rosme".parse::<Method>().unwrap_err().to_string().contains("rome, memit, ft, mend, alphaedit, ultraedit or emmet"));
}

/// The field lists are the types' own: every field a full config serialises, and no other.
fn check_fields<H: MethodConfig>(full: Value) {
    let h: H = serde_json::from_value(full).unwrap();
    let serialised: BTreeSet<String> = serde_json::to_value(&h).unwrap().as_object().unwrap().keys().cloned().collect();
    let listed: BTreeSet<String> = H::fields().into_iter().map(String::from).collect();
    assert_eq!(serialised, listed, "{}", H::METHOD);
}

#[test]
fn field_lists_match_the_types() {
    let cfg = gpt2(4, 32);
    let mut rome = RomeHparams::starting_point(&cfg);
    rome["context_templates"] = json!(["{}"]);
    rome["seed"] = json!(1);
    check_fields::<RomeHparams>(rome);
    let mut memit = MemitHparams::starting_point(&cfg);
    memit["context_templates"] = json!(["{}"]);
    check_fields::<MemitHparams>(memit);
    let mut alpha = AlphaEditHparams::starting_point(&cfg);
    alpha["context_templates"] = json!(["{}"]);
    alpha["mom2_update_weight"] = json!(15000);
    check_fields::<AlphaEditHparams>(alpha);
    let mut ft = FtHparams::starting_point(&cfg);
    ft["wd_power_law"] = json!([-0.87, 0.15]);
    ft["wd_power_law_tuple_check"] = json!(true);
    check_fields::<FtHparams>(ft);
    let mut mend = MendHparams::starting_point(&cfg);
    for (k, v) in [("n_toks", json!(10)), ("model_name", json!("gpt2-xl")), ("inner_params", json!(["transformer.h.3.mlp.c_fc.weight"]))] {
        mend[k] = v;
    }
    check_fields::<MendHparams>(mend);
    let mut emmet = EmmetHparams::starting_point(&cfg);
    emmet["context_templates"] = json!(["{}"]);
    check_fields::<EmmetHparams>(emmet);
    check_fields::<UltraEditHparams>(UltraEditHparams::starting_point(&cfg));
}

#[test]
fn every_shipped_file_parses_as_its_method() {
    for s in SHIPPED {
        let v: Value = serde_json::from_str(s.text).unwrap();
        let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        let (fields, module) = match s.method {
            Method::Rome => (RomeHparams::fields(), serde_json::from_value::<RomeHparams>(v).unwrap().rewrite_module_tmp.clone()),
            Method::Memit => (MemitHparams::fields(), serde_json::from_value::<MemitHparams>(v).unwrap().rewrite_module_tmp.clone()),
            Method::AlphaEdit => (AlphaEditHparams::fields(), serde_json::from_value::<AlphaEditHparams>(v).unwrap().rewrite_module_tmp.clone()),
            Method::Ft => (FtHparams::fields(), serde_json::from_value::<FtHparams>(v).unwrap().rewrite_module_tmp),
            Method::Emmet => (EmmetHparams::fields(), serde_json::from_value::<EmmetHparams>(v).unwrap().rewrite_module_tmp.clone()),
            Method::UltraEdit => {
                let h = serde_json::from_value::<UltraEditHparams>(v).unwrap();
                (UltraEditHparams::fields(), h.edit_modules[0].clone())
            }
            // MEND's configs name no module (the hypernetwork file does).
            Method::Mend => {
                serde_json::from_value::<MendHparams>(v).unwrap();
                (MendHparams::fields(), crate::models::modules::layers_name(s.family).to_string())
            }
        };
        assert!(keys.iter().all(|k| fields.contains(&k.as_str())), "{}: {keys:?}", s.path);
        assert!(module.starts_with(crate::models::modules::layers_name(s.family)), "{}", s.path);
    }
    // One default per method and model.
    for s in SHIPPED.iter().filter(|s| s.default) {
        assert_eq!(SHIPPED.iter().filter(|t| t.default && t.method == s.method && t.model == s.model).count(), 1, "{}", s.path);
    }
}

#[test]
fn generic_starting_points() {
    let tiny = gpt2(4, 32);
    let rome: RomeHparams = serde_json::from_value(RomeHparams::starting_point(&tiny)).unwrap();
    assert_eq!(rome.layers, vec![1]);
    assert_eq!(rome.v_loss_layer, 3);
    rome.validate(&tiny).unwrap();
    let memit: MemitHparams = serde_json::from_value(MemitHparams::starting_point(&tiny)).unwrap();
    assert_eq!(memit.layers, vec![0, 1]);
    memit.validate(&tiny).unwrap();
    let ft: FtHparams = serde_json::from_value(FtHparams::starting_point(&tiny)).unwrap();
    assert_eq!(ft.tuned_names(&tiny), ["transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias"]);
    ft.validate(&tiny).unwrap();
    // GPT-J depth reproduces the reference layers.
    let gptj =
        ModelConfig::from_json(&json!({"model_type": "gptj", "n_embd": 64, "n_head": 4, "n_layer": 28, "vocab_size": 10, "n_positions": 8}), Path::new("c"))
            .unwrap();
    let memit: MemitHparams = serde_json::from_value(MemitHparams::starting_point(&gptj)).unwrap();
    assert_eq!(memit.layers, vec![3, 4, 5, 6, 7, 8]);
    let one = gpt2(1, 32);
    let h: RomeHparams = serde_json::from_value(RomeHparams::starting_point(&one)).unwrap();
    assert_eq!(h.layers, vec![0]);
    h.validate(&one).unwrap();
    let h: MemitHparams = serde_json::from_value(MemitHparams::starting_point(&one)).unwrap();
    assert_eq!(h.layers, vec![0]);
    h.validate(&one).unwrap();
}

#[test]
fn set_values() {
    assert_eq!(parse_set::<MemitHparams>("layers=[3,4]").unwrap(), ("layers".into(), json!([3, 4])));
    assert_eq!(parse_set::<MemitHparams>("memit.layers=3-5").unwrap().1, json!([3, 4, 5]));
    assert_eq!(parse_set::<RomeHparams>("layers=17").unwrap().1, json!([17]));
    assert_eq!(parse_set::<RomeHparams>("layers=1,2").unwrap().1, json!([1, 2]));
    assert_eq!(parse_set::<MemitHparams>("solver=direct").unwrap().1, json!("direct"));
    assert_eq!(parse_set::<MemitHparams>("v_lr=0.1").unwrap().1, json!(0.1));
    assert_eq!(parse_set::<FtHparams>("ft.norm_constraint=false").unwrap().1, json!(false));
    assert!(parse_set::<RomeHparams>("memit.v_lr=0.1").unwrap_err().to_string().contains("this run uses rome"));
    assert!(parse_set::<FtHparams>("rome.v_lr=0.1").unwrap_err().to_string().contains("this run uses ft"));
    let err = parse_set::<RomeHparams>("v_lrr=1").unwrap_err().to_string();
    assert!(err.contains("did you mean `v_lr`") && err.contains("clamp_norm_factor"), "{err}");
    // A ROME field is not an FT one.
    let err = parse_set::<FtHparams>("v_lr=1").unwrap_err().to_string();
    assert!(err.contains("unknown ft hyperparameter `v_lr`") && err.contains("norm_constraint"), "{err}");
    assert!(parse_set::<RomeHparams>("v_lr").unwrap_err().to_string().contains("KEY=VALUE"));
    assert_eq!(distance("kitten", "sitting"), 3);
}

#[test]
fn shipped_names() {
    assert_eq!(named(Method::Ft, "ft/gpt2-xl_attn").unwrap().path, "configs/ft/gpt2-xl_attn.json");
    assert_eq!(named(Method::Ft, "gpt2-xl_attn.json").unwrap().path, "configs/ft/gpt2-xl_attn.json");
    assert_eq!(named(Method::Ft, "configs/ft/EleutherAI_gpt-j-6B_wd.json").unwrap().model, "gpt-j-6b");
    assert!(named(Method::Rome, "gpt2-xl_attn").is_none());
    assert_eq!(named(Method::Rome, "rome/gpt2-xl").unwrap().path, "configs/rome/gpt2-xl.json");
}
