//! MEND (Mitchell et al. 2022; reference spec §5): a hypernetwork maps each inner weight's
//! gradient factors to an edit. So far: the hypernetwork itself ([`network`]); the edit path
//! (capturing x and δ at the hook points), checkpoint import and training follow.

pub mod network;
