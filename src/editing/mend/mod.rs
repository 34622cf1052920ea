//! MEND (Mitchell et al. 2022; reference spec §5): a hypernetwork maps each inner weight's
//! gradient factors to an edit: the hypernetwork ([`network`]), the gradient factors it edits
//! ([`factors`]), a whole model's hypernetwork with its file and its edit ([`hypernet`]), the
//! reference checkpoints' import ([`import`]), the method behind `edit apply` ([`method`]), and
//! training ([`train`] on [`data`]).

pub mod data;
pub mod factors;
pub mod hparams;
pub mod hypernet;
pub mod import;
pub mod method;
pub mod network;
pub mod plan;
pub mod train;

pub use hparams::MendHparams;
pub use method::Mend;
