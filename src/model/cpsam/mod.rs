//! Cellpose-SAM (cellpose 4 `vit.CPSAM`): the network ([`Cpsam`], blocks in `blocks`) and its
//! files ([`CpsamModel`]).
mod blocks;
mod model;
mod net;

pub use blocks::{rel_pos_for, BlockShape};
pub(crate) use model::copy_checked;
pub use model::{infer_cpsam_config, state_dict_keys, CpsamModel};
pub use net::{Cpsam, CpsamConfig};
