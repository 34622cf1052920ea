//! MEND (Mitchell et al. 2022; reference spec §5): a hypernetwork maps each inner weight's
//! gradient factors to an edit. So far: the hypernetwork ([`network`]), the gradient factors it edits
//! ([`factors`]), and a whole model's hypernetwork with its file and its edit ([`hypernet`]);
//! the edit method behind `edit apply`, checkpoint import and training follow.

pub mod factors;
pub mod hypernet;
pub mod network;
