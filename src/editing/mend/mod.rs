//! MEND (Mitchell et al. 2022; reference spec §5): a hypernetwork maps each inner weight's
//! gradient factors to an edit. So far: the hypernetwork ([`network`]) and the gradient factors it edits
//! ([`factors`]); the edit method, checkpoint import and training follow.

pub mod factors;
pub mod network;
