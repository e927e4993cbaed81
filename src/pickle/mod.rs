//! Safe pickle reading and minimal pickle writing.
//!
//! PyTorch model files and large_image's numpy region responses are both pickles. The reader
//! refuses every global outside a caller-given allow-list, so loading a file never constructs or
//! runs anything; the writer emits only what `torch.load(weights_only=True)` accepts.

mod reader;
mod value;
mod writer;

pub use reader::{read, Allowed, PickleError};
pub use value::{Call, Global, Value};
pub use writer::Writer;
