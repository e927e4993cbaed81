//! The Cellpose network and its files: CPnet in tch ([`cpnet`]), PyTorch `torch.save` files in pure
//! Rust ([`torch_file`]), moving weights between them ([`weights`]), and built-in model names
//! ([`registry`]).
pub mod cpnet;
pub mod registry;
pub mod torch_file;
mod weights;

pub use cpnet::{Cpnet, CpnetConfig, NetOutput};
pub use weights::{infer_config, raw_to_tensor, state_dict_order, tensor_to_raw, Model, ModelError};
