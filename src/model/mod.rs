//! The Cellpose networks and their files: CPnet in tch ([`cpnet`]), Cellpose-SAM in tch
//! ([`cpsam`]), which of the two a file holds ([`ModelFamily`]), PyTorch `torch.save` files in pure
//! Rust ([`torch_file`]), moving weights between them ([`Model`], [`CpsamModel`]), built-in names
//! ([`registry`]) and the rule for names of models we write ([`name`]).
pub mod cpnet;
pub mod cpsam;
mod family;
pub mod name;
mod open;
pub mod registry;
pub mod torch_file;
mod weights;

pub use cpnet::{Cpnet, CpnetConfig, NetOutput};
pub use cpsam::{Cpsam, CpsamConfig, CpsamModel};
pub use family::{FamilyError, ModelFamily, CPNET_MARKER, CPSAM_MARKER};
pub use open::{open_any, open_model, AnyModel, LoadedCpsam, LoadedModel, OpenModelError};
pub use weights::{infer_config, raw_to_tensor, state_dict_order, tensor_to_raw, Model, ModelError};
