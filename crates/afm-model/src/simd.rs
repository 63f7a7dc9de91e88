//! Small CPU SIMD toolkit shared by the Rust kernels (`xent`, the fused
//! LM-head loss, and `gpt::cpu_step`, one-token decoding): bf16 as libtorch
//! stores it, a vectorisable `exp`, and run-time dispatch between the same
//! generic function compiled for AVX2+FMA and for AVX-512.
//!
//! The kernels are plain Rust over lane arrays that LLVM vectorises; the
//! `multiversion!` wrappers only add `#[target_feature]`, so every kernel has
//! one definition and a portable fallback.

/// `multiversion!(generic => avx2_name, avx512_name; (args) -> ret)`: the
/// same `#[inline(always)]` generic row function compiled again with AVX2+FMA
/// and with AVX-512 enabled (callers pick one after `detect`).
macro_rules! multiversion {
    ($inner:ident => $avx2:ident, $avx512:ident; ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        fn $avx2<E: Elem>($($arg: $ty),*) -> $ret {
            $inner::<E>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        fn $avx512<E: Elem>($($arg: $ty),*) -> $ret {
            $inner::<E>($($arg),*)
        }
    };
}

/// A logits element: f32 or bf16 (raw bits).
pub(crate) trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// bf16 as stored by libtorch: the high 16 bits of an f32.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Bf16(pub u16);

impl Elem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    /// Round to nearest even, as libtorch's cast does (NaN stays NaN).
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        let b = x.to_bits();
        let round = 0x7fff + ((b >> 16) & 1);
        Bf16((b.wrapping_add(round) >> 16) as u16)
    }
}

/// `exp(x)` for `x <= 0` (anything below -87 is clamped to -87, i.e.
/// ~1e-38). NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two (Cephes): `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * scale
}

pub(crate) use multiversion;

/// `dispatch!(isa, avx512_fn, avx2_fn, generic_fn, (args..))`: call the
/// variant `detect` chose.
macro_rules! dispatch {
    ($isa:expr, $avx512:path, $avx2:path, $generic:path, ($($a:expr),* $(,)?)) => {
        match $isa {
            // SAFETY: the CPU supports the features (checked by `detect`).
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Isa::Avx512 => unsafe { $avx512($($a),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Isa::Avx2 => unsafe { $avx2($($a),*) },
            $crate::simd::Isa::Baseline => $generic($($a),*),
        }
    };
}
pub(crate) use dispatch;

#[derive(Clone, Copy)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}
