//! `edit`: fact editing for causal language models (ROME, MEMIT, AlphaEdit, FT, MEND) on candle.
//!
//! The library holds everything numeric and everything that touches model files; the `edit`
//! binary (`src/main.rs`, `src/cli/`) only parses arguments, calls into it and prints results.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod digest;
pub mod editing;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod hub;
pub mod identity;
pub mod linalg;
pub mod model;
pub mod models;
pub mod patch;
pub mod pyrandom;
pub mod stats;
pub mod threads;
pub mod tokenizer;
pub mod trace;

pub use config::{Family, ModelConfig};
pub use error::{Error, Result};
pub use model::{load_model, LoadedModel};
pub use models::{Batch, CausalLm, Intervention, Logits, Site, Trace, TraceSpec};
