//! The loss policy of the recipe's training stages: boundary weighting
//! for the AFM, none for the agents' own models, and the user's
//! `[train.loss]` kept as written. Depends on nothing else in the crate, so
//! the config's validation and the training stages both use it.

use afm_train::LossConfig;

/// The boundary weighting `boundary = true` stands for when the user's
/// `[train.loss]` leaves it at the defaults: role tokens x2, the first 3
/// tokens after a hand-off x1.5.
pub const BOUNDARY_DEFAULTS: (f64, usize, f64) = (2.0, 3, 1.5);

/// True when `[train.loss]` sets any boundary-weighting field.
pub(crate) fn user_sets_boundary(l: &LossConfig) -> bool {
    let d = LossConfig::default();
    (l.role_token_weight, l.handoff_tokens, l.handoff_weight)
        != (d.role_token_weight, d.handoff_tokens, d.handoff_weight)
}

/// The loss of one training stage: the user's `[train.loss]` as given. With
/// `boundary`, fields the user left at the defaults get
/// [`BOUNDARY_DEFAULTS`] (the user's own boundary values are kept); without
/// it (the per-agent models, the no-boundary ablation) the boundary fields
/// are neutral unless the user set them (a pipeline with `boundary = false`
/// and such values is rejected by [`crate::PipelineConfig::validated`]).
pub fn boundary_loss(user: &LossConfig, boundary: bool) -> LossConfig {
    let mut l = user.clone();
    if boundary && !user_sets_boundary(user) {
        (l.role_token_weight, l.handoff_tokens, l.handoff_weight) = BOUNDARY_DEFAULTS;
    }
    l
}
