//! The model's seeding of the one generator, `afm_format::SplitMix64`:
//! weight initialisation and sampling depend only on the seed, not on
//! libtorch's global generator, thread interleaving or the device.

use afm_format::SplitMix64;

/// Xored into the model's seeds, so its streams differ from other users
/// of the same seed (the data order, the task generator).
const SALT: u64 = 0x5DEE_CE66_D1CE_4E5B;

/// The model's generator for `seed`.
pub(crate) fn seeded(seed: u64) -> SplitMix64 {
    SplitMix64::new(seed ^ SALT)
}

#[cfg(test)]
mod tests {
    /// The stream the model drew from before it shared afm-format's
    /// generator (salted seed 0): checkpoints initialised from a seed stay
    /// the same.
    #[test]
    fn salted_stream_is_unchanged() {
        let mut r = super::seeded(0);
        let mut state = 0x5DEE_CE66_D1CE_4E5Bu64;
        for _ in 0..4 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            assert_eq!(r.next_u64(), z ^ (z >> 31));
        }
    }
}
