//! The Cellpose network and its files: CPnet in tch ([`cpnet`]), PyTorch `torch.save` files in pure
//! Rust ([`torch_file`]), moving weights between them ([`Model`]), built-in names ([`registry`]) and
//! the rule for names of models we write ([`name`]).
pub mod cpnet;
pub mod name;
mod open;
pub mod registry;
pub mod torch_file;
mod weights;

pub use cpnet::{Cpnet, CpnetConfig, NetOutput};
pub use open::{open_model, LoadedModel, OpenModelError};
pub use weights::{infer_config, raw_to_tensor, state_dict_order, tensor_to_raw, Model, ModelError};
