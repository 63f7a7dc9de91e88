//! Defensive safetensors reading and writing of f32 tensors.
//!
//! Reading checks the header length against the file size *before*
//! allocating anything, lets the `safetensors` crate validate offsets, and
//! rejects unsupported dtypes and non-finite values with errors naming the
//! file and the tensor.

use anyhow::{bail, Context};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Largest header accepted (same bound as the safetensors crate).
const MAX_HEADER: u64 = 100_000_000;

/// Read every tensor of `path` as f32 (bf16/f16 are widened) on `device`,
/// sorted by name. Errors on truncation, bad headers, unsupported dtypes
/// and NaN/inf values.
pub fn read(path: &Path, device: Device) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading metadata of {}", path.display()))?
        .len();
    if len < 8 {
        bail!(
            "{}: truncated safetensors file ({len} bytes, need at least 8)",
            path.display()
        );
    }
    let mut head = [0u8; 8];
    f.read_exact(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let n = u64::from_le_bytes(head);
    if n > len - 8 {
        bail!(
            "{}: safetensors header length {n} is larger than the file ({len} bytes): truncated or not a safetensors file",
            path.display()
        );
    }
    if n > MAX_HEADER {
        bail!(
            "{}: safetensors header length {n} exceeds {MAX_HEADER} bytes",
            path.display()
        );
    }
    let mut buf = Vec::with_capacity(len as usize);
    buf.extend_from_slice(&head);
    f.read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        anyhow::anyhow!(
            "{}: invalid safetensors file (truncated or corrupt): {e}",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::U8 | Dtype::BOOL => {
                // HF GPT-2 files may carry `attn.bias` masks; callers ignore them.
                out.push((name, Tensor::zeros([0], (Kind::Float, Device::Cpu))));
                continue;
            }
            d => bail!(
                "{}: tensor {name:?} has unsupported dtype {d:?} (need F32, BF16 or F16)",
                path.display()
            ),
        };
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: tensor {name:?}", path.display()))?
            .to_kind(Kind::Float);
        if t.numel() > 0 && !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            bail!(
                "{}: tensor {name:?} contains NaN or infinite values",
                path.display()
            );
        }
        out.push((name, t.to_device(device)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// An f32 tensor copied to host memory, ready to serialise.
struct HostF32 {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostF32 {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(t: &Tensor) -> anyhow::Result<HostF32> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.f_copy_data(&mut v, n)?;
    let mut bytes = Vec::with_capacity(n * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Ok(HostF32 {
        shape: t.size().iter().map(|&d| d as usize).collect(),
        bytes,
    })
}

/// Write `tensors` (any float kind; stored as F32) to `path` with
/// `{"format": "pt"}` metadata.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    let host: Vec<(String, HostF32)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_host(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(host.iter().map(|(n, h)| (n.as_str(), h)), Some(meta), path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
