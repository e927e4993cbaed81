//! Segmentation after the network, as cellpose 3.1.1.2 (and 4.2.1.1 for cpsam models,
//! [`compute_masks_cp4`]): flows -> masks ([`compute_masks`]:
//! Euler integration in [`dynamics`], clustering in [`get_masks`], clean-up in `cleanup`),
//! label bookkeeping ([`labels`]) and average-precision scoring ([`metrics`]).
mod assignment;
mod cleanup;
pub mod dynamics;
pub mod labels;
mod masks;
pub mod metrics;

pub use cleanup::{fill_holes_and_remove_small_masks, flow_error, remove_bad_flow_masks, resize_nearest};
pub use dynamics::{follow_flows, follow_flows_cpu, follow_flows_torch};
pub use labels::relabel_consecutive;
pub use masks::{
    compute_masks, compute_masks_cp4, compute_masks_with, eval_niter, get_masks, Integrator, MaskParams,
    SegmentError,
};
pub use metrics::{
    aggregated_jaccard_index, average_precision, average_precision_cellpose, mask_ious, matched_pairs,
    sum_counts, CellposeAp, MatchCounts, MatchedPair, MetricsError, DEFAULT_THRESHOLDS,
};
