//! The integration tests, one crate (one binary to link instead of one per file): each module
//! drives the real `edit` binary or the library on the fixtures in `tests/fixtures/`.

mod common;

mod alphaedit;
mod apply_cli;
mod benchmarks;
mod cli;
mod emmet;
mod eval_cli;
mod fact_gpt2;
mod fact_llama;
mod families;
mod ft;
mod ft_cli;
mod golden;
mod mend;
mod mend_train;
mod methods;
mod new_user;
mod patch;
mod requests_hparams;
mod rope;
mod share;
mod slurm;
mod stats;
mod tokenizers;
mod trace;
mod ultraedit;
