//! [`Lm`] backed by a real `afm_model::Model`: each session is one
//! `afm_model::Decoder` (a fresh KV cache), so a session's forward passes
//! are exactly the tokens fed to it.

use crate::lm::{Lm, Session};
use afm_model::{Decoder, Model, Precision, SamplingConfig};
use afm_tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::cell::Cell;
use tch::Tensor;

/// A model plus how to sample from it.
pub struct ModelLm<'m> {
    model: &'m Model,
    precision: Precision,
    sampling: SamplingConfig,
    /// Sessions opened so far: session `i` samples with seed `seed + i`, so
    /// repeated calls do not replay one random stream.
    sessions: Cell<u64>,
}

impl<'m> ModelLm<'m> {
    /// Wrap `model`; `sampling.temperature == 0` is greedy.
    pub fn new(model: &'m Model, precision: Precision, sampling: SamplingConfig) -> Self {
        Self {
            model,
            precision,
            sampling,
            sessions: Cell::new(0),
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &Model {
        self.model
    }
}

impl Lm for ModelLm<'_> {
    fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }
    fn n_ctx(&self) -> usize {
        self.model.config.n_ctx
    }
    fn start(&self, batch: usize) -> Result<Box<dyn Session + '_>> {
        let i = self.sessions.get();
        self.sessions.set(i + 1);
        let mut sampling = self.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(i);
        Ok(Box::new(ModelSession {
            decoder: Decoder::new(self.model, batch, self.precision),
            logits: None,
            sampling,
            n_vocab: self.model.tokenizer.n_vocab() as i64,
            device: self.model.device(),
        }))
    }
}

struct ModelSession<'m> {
    decoder: Decoder<'m>,
    /// `[batch, V]` logits at each row's last fed position.
    logits: Option<Tensor>,
    sampling: SamplingConfig,
    /// The tokenizer's vocabulary: logits of padding rows beyond it are cut
    /// off, so a sampled id always decodes.
    n_vocab: i64,
    device: tch::Device,
}

impl Session for ModelSession<'_> {
    fn feed(&mut self, rows: &[(usize, Vec<u32>)]) -> Result<()> {
        self.logits = Some(self.decoder.feed(rows)?);
        Ok(())
    }

    fn sample(&mut self, rows: &[usize]) -> Result<Vec<u32>> {
        let Some(logits) = &self.logits else {
            bail!("decoder session sampled before anything was fed");
        };
        let v = logits.size()[1].min(self.n_vocab);
        let logits = logits.narrow(1, 0, v);
        if self.sampling.temperature > 0.0 {
            // Sample every row so row r keeps drawing from its own random
            // stream, then keep the rows asked for.
            let all = self.decoder.sample(&logits, &self.sampling)?;
            rows.iter()
                .map(|&r| {
                    all.get(r)
                        .map(|x| x.0)
                        .ok_or_else(|| anyhow::anyhow!("decoder session: row {r} out of range"))
                })
                .collect()
        } else {
            // Greedy: argmax on the device over the live rows only (the
            // first maximal index, as `Decoder::sample` picks), so only the
            // chosen ids cross to the host.
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::from_slice(&idx).to_device(self.device);
            let best = logits
                .index_select(0, &idx)
                .argmax(-1, false)
                .to_device(tch::Device::Cpu);
            let best = Vec::<i64>::try_from(&best)
                .map_err(|e| anyhow::anyhow!("decoder session: reading argmax: {e}"))?;
            let tok = &self.decoder.model().tokenizer;
            best.into_iter()
                .map(|r| {
                    tok.id_of_row(r as u32).ok_or_else(|| {
                        anyhow::anyhow!("decoder session: argmax row {r} has no token")
                    })
                })
                .collect()
        }
    }

    fn row_len(&self, row: usize) -> usize {
        self.decoder.row_len(row)
    }
}
