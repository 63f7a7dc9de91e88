//! The next-token source the runtimes drive.
//!
//! Both runtimes are written against two small traits instead of a model:
//! [`Lm`] (something that can open decoding sessions) and [`Session`]
//! (batched incremental decoding: feed tokens to rows, sample the next
//! token of some rows). [`crate::model_lm::ModelLm`] implements them with
//! `afm_model::Decoder` (a KV cache; each session is one fresh cache);
//! [`ScriptedLm`] implements them with a policy function, so tests can force
//! an exact token sequence and check tool execution, observation injection
//! and the token accounting without any network weights.

use afm_tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::sync::Arc;

/// A language model that can open batched decoding sessions.
pub trait Lm {
    /// The tokenizer (role vocabulary included) the model was trained with.
    fn tokenizer(&self) -> &Tokenizer;
    /// Maximum number of positions one row may hold.
    fn n_ctx(&self) -> usize;
    /// A fresh session (empty cache) with `batch` rows.
    fn start(&self, batch: usize) -> Result<Box<dyn Session + '_>>;
}

/// One batched decoding session: every row is an independent sequence that
/// grows by [`Session::feed`].
pub trait Session {
    /// Append tokens to some rows (any lengths, rows may be skipped). Every
    /// token fed is processed by a forward pass. The caller checks
    /// [`Session::row_len`] against [`Lm::n_ctx`] first.
    fn feed(&mut self, rows: &[(usize, Vec<u32>)]) -> Result<()>;
    /// The next token of each listed row, given everything fed to it so far.
    /// Every listed row must have been fed at least once.
    fn sample(&mut self, rows: &[usize]) -> Result<Vec<u32>>;
    /// Tokens fed to `row` so far.
    fn row_len(&self, row: usize) -> usize;
}

/// A scripted policy: given everything fed to a row so far, the tokens the
/// "model" emits next (one or more; they are handed out one per
/// [`Session::sample`] call, and the policy is asked again once they run
/// out). It must return at least one token.
pub type Policy = Arc<dyn Fn(&[u32]) -> Vec<u32> + Send + Sync>;

/// A fake model driven by a [`Policy`]: for tests and for checking the
/// runtimes' mechanics (tool calls, observation injection, accounting)
/// independently of any trained weights. It enforces `n_ctx` like a real
/// model and records every token fed, so tests can inspect exactly what the
/// runtime injected.
#[derive(Clone)]
pub struct ScriptedLm {
    tokenizer: Tokenizer,
    n_ctx: usize,
    policy: Policy,
}

impl ScriptedLm {
    /// A scripted model with the given tokenizer, context size and policy.
    pub fn new(tokenizer: Tokenizer, n_ctx: usize, policy: Policy) -> Self {
        Self {
            tokenizer,
            n_ctx,
            policy,
        }
    }
}

impl Lm for ScriptedLm {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn start(&self, batch: usize) -> Result<Box<dyn Session + '_>> {
        Ok(Box::new(ScriptedSession {
            lm: self,
            fed: vec![Vec::new(); batch],
            queue: vec![Vec::new(); batch],
        }))
    }
}

/// Session of a [`ScriptedLm`].
pub struct ScriptedSession<'a> {
    lm: &'a ScriptedLm,
    fed: Vec<Vec<u32>>,
    /// Tokens still to emit per row, in reverse order (popped from the end).
    queue: Vec<Vec<u32>>,
}

impl Session for ScriptedSession<'_> {
    fn feed(&mut self, rows: &[(usize, Vec<u32>)]) -> Result<()> {
        for (r, toks) in rows {
            let Some(fed) = self.fed.get_mut(*r) else {
                bail!("scripted session: row {r} out of range");
            };
            if fed.len() + toks.len() > self.lm.n_ctx {
                bail!(
                    "scripted session: row {r} would hold {} tokens, n_ctx is {}",
                    fed.len() + toks.len(),
                    self.lm.n_ctx
                );
            }
            fed.extend_from_slice(toks);
        }
        Ok(())
    }

    fn sample(&mut self, rows: &[usize]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(rows.len());
        for &r in rows {
            let Some(fed) = self.fed.get(r) else {
                bail!("scripted session: row {r} out of range");
            };
            if fed.is_empty() {
                bail!("scripted session: row {r} sampled before being fed");
            }
            if self.queue[r].is_empty() {
                let mut next = (self.lm.policy)(fed);
                if next.is_empty() {
                    bail!("scripted policy returned no token");
                }
                next.reverse();
                self.queue[r] = next;
            }
            out.push(self.queue[r].pop().unwrap_or(afm_tokenizer::END));
        }
        Ok(out)
    }

    fn row_len(&self, row: usize) -> usize {
        self.fed.get(row).map_or(0, Vec::len)
    }
}
