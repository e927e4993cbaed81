//! Training outputs next to the model: metrics history (JSON lines), TensorBoard scalars.
pub mod tensorboard;
