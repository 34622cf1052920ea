//! MEND (Mitchell et al. 2022; reference spec §5): a hypernetwork maps each inner weight's
//! gradient factors to an edit: the hypernetwork ([`network`]), the gradient factors it edits
//! ([`factors`]), a whole model's hypernetwork with its file and its edit ([`hypernet`]), the
//! reference checkpoints' import ([`import`]), and the method behind `edit apply` ([`method`]).

pub mod factors;
pub mod hypernet;
pub mod import;
pub mod method;
pub mod network;

pub use method::Mend;
