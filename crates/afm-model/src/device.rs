//! Device selection, including loading libtorch's CUDA backend.

use tch::Device;

/// Parse `cpu`, `cuda`, `cuda:N` or `auto` into a tch device.
///
/// The torch wheel ships `libtorch_cuda.so`, but the linker drops it when
/// nothing references its symbols (`--as-needed`), and then tch reports no
/// CUDA (tch-rs #980/#907). Loading it explicitly before asking fixes that
/// without link-order tricks.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            load_cuda_backend();
            Ok(Device::cuda_if_available())
        }
        _ => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("bad device {name:?}: use cpu, cuda, cuda:N or auto")
                    })?,
                None => anyhow::bail!("bad device {name:?}: use cpu, cuda, cuda:N or auto"),
            };
            load_cuda_backend();
            if !tch::Cuda::is_available() {
                anyhow::bail!("--device {name}: CUDA is not available on this machine (libtorch_cuda could not be loaded or no GPU is visible)");
            }
            let n = tch::Cuda::device_count() as usize;
            if index >= n {
                anyhow::bail!("--device {name}: only {n} CUDA device(s) visible");
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// dlopen `libtorch_cuda.so` (found through the rpath) so its CUDA hooks
/// register. Harmless when the library is absent.
pub fn load_cuda_backend() {
    #[cfg(target_os = "linux")]
    unsafe {
        libc::dlopen(
            c"libtorch_cuda.so".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        );
    }
}

/// Keep large freed blocks in the heap instead of returning them to the OS.
///
/// glibc serves every allocation above its mmap threshold (128 KiB, growing
/// to at most 32 MiB) with a fresh `mmap`, so each training step's `[N, V]`
/// logits, gradients and weight casts (tens to hundreds of MB) are
/// page-faulted in again and zeroed by the kernel. Measured on `mini` bf16
/// (`examples/profile_step`): 1.44 s -> 0.85 s per 8x256 step for the
/// unfused loss. PyTorch's CPU tuning guide gets the same effect from
/// jemalloc/tcmalloc; this is the glibc-only way (the environment variable
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967295`
/// does the same for any process). Call it once at start-up; idempotent, a
/// no-op off glibc. The cost: peak memory is not handed back to the OS
/// until exit.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; safe to call at
    // any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The device the workspace's device-generic tests build their models on:
/// `AFM_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`, `auto`), the CPU when unset.
/// `cargo xtask gpu-smoke` sets it to `cuda`, so the same tests check the
/// CUDA code paths. A value that does not parse stops the test run.
pub fn test_device() -> Device {
    match std::env::var("AFM_TEST_DEVICE") {
        Ok(name) if !name.trim().is_empty() => {
            parse_device(&name).unwrap_or_else(|e| panic!("AFM_TEST_DEVICE={name:?}: {e:#}"))
        }
        _ => Device::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        let t = tch::Tensor::from_slice(&[1f32, 2.0, 3.0]);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
