//! TRL export: a prepared dataset's packed rows as pre-tokenized JSONL for
//! TRL's `SFTTrainer` with `padding_free=True`.
//!
//! One line per packed row, exactly as afm packed it (the same documents in
//! the same row, in the same order; the rows in shard order). The row's
//! padding tail is left out: TRL's padding-free collator concatenates the
//! rows of a batch anyway, so padding would only cost compute.
//!
//! | field          | per    | value |
//! |----------------|--------|-------|
//! | `input_ids`    | token  | the row's real tokens (afm ids: GPT-2 `r50k_base` + afm's specials) |
//! | `labels`       | token  | `input_ids[j]` when afm trains the prediction of token `j`, else `-100`; `-100` at every document's first token |
//! | `position_ids` | token  | 0, 1, ... restarting at every document |
//! | `seq_lengths`  | row    | the documents' lengths (sum = `len(input_ids)`) |
//! | `agent_ids`    | token  | role id of the input token (0 none, 1 observation, 2 + i agent i) |
//! | `owner_ids`    | token  | role id of the agent that owns `labels[j]` (0 none); aligned like `labels` |
//! | `loss_weights` | token  | afm's loss weight of `labels[j]` (0 where `labels[j] == -100`); aligned like `labels` |
//!
//! **Labels follow TRL's (Hugging Face's) convention**: `labels` sits on the
//! same positions as `input_ids` and the model shifts it (logits at `j - 1`
//! are scored against `labels[j]`). afm's shards store the other alignment:
//! `targets[i]` is the token predicted *at* `i` (the next token of the same
//! document) with weight `weights[i]`. So `labels[j] = tokens[j]` iff
//! `weights[j-1] > 0` (same document), `loss_weights[j] = weights[j-1]` and
//! `owner_ids[j] = owners[j-1]`. A document's last position predicts
//! nothing in afm (weight 0), and its first token is predicted by nothing,
//! so `labels` is `-100` there, as TRL's collator also sets it where
//! `position_ids == 0`.
//!
//! Nothing is lost: [`to_row`] rebuilds the shard row (padding included)
//! from an exported row and `row_len`, and the tests check that it does.
//!
//! In TRL (`trl/trainer/sft_trainer.py`): `SFTConfig(padding_free=True,
//! max_length=None, dataset_kwargs={"skip_prepare_dataset": True})`. The
//! `labels` column is used as is; `DataCollatorForLanguageModeling` with
//! `padding_free` concatenates a batch's rows and builds `position_ids`
//! from `seq_lengths` (the exported `position_ids`), so flash-attention
//! keeps the documents apart as afm does. TRL keeps `input_ids`, `labels`
//! and `seq_lengths`; its loss ignores `loss_weights` (equal to afm's when
//! every weight is 0 or 1). `python/tests/test_trl_export.py` checks this
//! with TRL and transformers themselves.
//!
//! `afm_export.json` (written last, after the old one is removed) names the
//! tokenizer, the special tokens, the role vocabulary (`roles[id]`), `row_len`
//! and per split the file, rows, documents, tokens and loss tokens.

use super::Written;
use afm_format::shards::{Row, Shards};
use afm_tokenizer::atomic::{self, AtomicFile};
use afm_tokenizer::{
    Tokenizer, VocabFile, END, EOT, FIRST_ROLE_TOKEN, OBS, ROLE_FIRST_AGENT, TASK,
};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The sidecar file describing an export.
pub const SIDECAR: &str = "afm_export.json";
/// The label of a token without loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
/// The splits a prepared dataset may hold, in order.
pub const SPLITS: [&str; 2] = ["train", "val"];

/// One exported row (one JSONL line). See the module docs for each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrlRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    pub seq_lengths: Vec<u32>,
    pub agent_ids: Vec<u16>,
    pub owner_ids: Vec<u16>,
    pub loss_weights: Vec<f32>,
}

/// `afm_export.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// `"trl"`.
    pub format: String,
    /// Version of this layout (1).
    pub version: u32,
    /// The BPE: `"r50k_base"` (GPT-2's; the same ids as `openai-community/gpt2`).
    pub tokenizer: String,
    /// A Hugging Face tokenizer with the same BPE ids.
    pub hf_tokenizer: String,
    /// Token ids are below this (resize a model's embeddings to it).
    pub vocab_size: usize,
    /// afm's special tokens and their ids.
    pub special_tokens: BTreeMap<String, u32>,
    /// Token id of `<|agent:agents[0]|>`; agent `i` is `first_role_token + i`.
    pub first_role_token: u32,
    /// Agent names in role order.
    pub agents: Vec<String>,
    /// Name of each role id (`agent_ids`, `owner_ids`): `roles[id]`.
    pub roles: Vec<String>,
    /// afm's row length (the longest exported row).
    pub row_len: usize,
    /// The label of a token without loss.
    pub ignore_index: i64,
    /// Per split (`train`, `val`).
    pub splits: BTreeMap<String, SplitInfo>,
    /// The prepared dataset's `vocab.json` as it was.
    pub vocab: VocabFile,
}

/// One split of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// The JSONL file (none when the split has no rows).
    pub file: Option<String>,
    pub rows: usize,
    pub documents: usize,
    /// Real tokens (= the sum of `len(input_ids)`).
    pub tokens: usize,
    /// Labels that are not `-100`.
    pub loss_tokens: usize,
    /// Padding positions of afm's rows, not exported.
    pub padding_dropped: usize,
    /// Rows are in curriculum order (keep it: do not shuffle).
    pub curriculum: bool,
    pub curriculum_stages: usize,
}

/// The documents of a shard row as `(start, end)` ranges, and where its
/// padding tail starts (`row.len()` when it has none). The padding is the
/// last document index when it starts with `<|endoftext|>` (a real
/// document never holds that token: it starts with `<|task|>`).
fn documents(row: &Row) -> (Vec<(usize, usize)>, usize) {
    let n = row.len();
    let mut docs = Vec::new();
    let mut i = 0;
    while i < n {
        let start = i;
        while i < n && row.docs[i] == row.docs[start] {
            i += 1;
        }
        docs.push((start, i));
    }
    match docs.last() {
        Some(&(start, end)) if end == n && row.tokens[start] == EOT => {
            docs.pop();
            (docs, start)
        }
        _ => (docs, n),
    }
}

/// The exported row of a shard row. An error (naming the position) when
/// the row breaks a shard invariant the labels rely on: positions restart
/// at every document, `targets[i]` is the next token of the document and
/// `<|endoftext|>` at its last position, which has weight 0 and owner 0;
/// the padding tail is `<|endoftext|>` with no role, owner or weight.
pub fn from_row(row: &Row) -> Result<TrlRow, String> {
    let (docs, real) = documents(row);
    if docs.is_empty() {
        return Err("the row holds no document (only padding)".into());
    }
    let mut out = TrlRow {
        input_ids: row.tokens[..real].to_vec(),
        labels: Vec::with_capacity(real),
        position_ids: Vec::with_capacity(real),
        seq_lengths: Vec::with_capacity(docs.len()),
        agent_ids: row.roles[..real].to_vec(),
        owner_ids: Vec::with_capacity(real),
        loss_weights: Vec::with_capacity(real),
    };
    for &(s, e) in &docs {
        for i in s..e {
            if row.positions[i] as usize != i - s {
                return Err(format!(
                    "position {i}: position id {} in a document starting at {s} (expected {})",
                    row.positions[i],
                    i - s
                ));
            }
            let next = if i + 1 < e { row.tokens[i + 1] } else { EOT };
            if row.targets[i] != next {
                return Err(format!(
                    "position {i}: target {} is not the document's next token {next}",
                    row.targets[i]
                ));
            }
            if i + 1 == e && (row.weights[i] != 0.0 || row.owners[i] != 0) {
                return Err(format!(
                    "position {i}: a document's last position has weight {} and owner {} (expected 0, 0)",
                    row.weights[i], row.owners[i]
                ));
            }
            out.position_ids.push(u32::from(row.positions[i]));
            if i == s {
                out.labels.push(IGNORE_INDEX);
                out.owner_ids.push(0);
                out.loss_weights.push(0.0);
            } else {
                let w = row.weights[i - 1];
                out.labels.push(if w > 0.0 {
                    i64::from(row.tokens[i])
                } else {
                    IGNORE_INDEX
                });
                out.owner_ids.push(row.owners[i - 1]);
                out.loss_weights.push(w);
            }
        }
        out.seq_lengths.push((e - s) as u32);
    }
    for i in real..row.len() {
        let k = i - real;
        if row.tokens[i] != EOT
            || row.targets[i] != EOT
            || row.weights[i] != 0.0
            || row.roles[i] != 0
            || row.owners[i] != 0
            || row.positions[i] as usize != k
        {
            return Err(format!(
                "position {i}: padding (from {real}) must be <|endoftext|> with no target, role, owner or weight"
            ));
        }
    }
    Ok(out)
}

/// The shard row an exported row came from: the inverse of [`from_row`]
/// (padding restored up to `row_len`). An error when the row is not one
/// [`from_row`] can write (lengths, `seq_lengths`, labels).
pub fn to_row(r: &TrlRow, row_len: usize) -> Result<Row, String> {
    let n = r.input_ids.len();
    let lens = [
        r.labels.len(),
        r.position_ids.len(),
        r.agent_ids.len(),
        r.owner_ids.len(),
        r.loss_weights.len(),
    ];
    if lens.iter().any(|&l| l != n) {
        return Err(format!(
            "per-token fields have lengths {lens:?}, input_ids {n}"
        ));
    }
    let total: u64 = r.seq_lengths.iter().map(|&l| u64::from(l)).sum();
    if total != n as u64 || r.seq_lengths.contains(&0) {
        return Err(format!(
            "seq_lengths {:?} do not split the {n} tokens",
            r.seq_lengths
        ));
    }
    if n > row_len {
        return Err(format!("{n} tokens do not fit a row of {row_len}"));
    }
    let mut row = Row::default();
    let mut s = 0;
    for (d, &l) in r.seq_lengths.iter().enumerate() {
        let e = s + l as usize;
        let d = u16::try_from(d).map_err(|_| format!("document {d} does not fit u16"))?;
        for i in s..e {
            let last = i + 1 == e;
            let (target, w, owner) = if last {
                (EOT, 0.0, 0)
            } else {
                (
                    r.input_ids[i + 1],
                    r.loss_weights[i + 1],
                    r.owner_ids[i + 1],
                )
            };
            let want_label = if i > s && r.loss_weights[i] > 0.0 {
                i64::from(r.input_ids[i])
            } else {
                IGNORE_INDEX
            };
            if r.labels[i] != want_label {
                return Err(format!(
                    "position {i}: label {} but {want_label} from input_ids and loss_weights",
                    r.labels[i]
                ));
            }
            row.tokens.push(r.input_ids[i]);
            row.targets.push(target);
            row.weights.push(w);
            row.roles.push(r.agent_ids[i]);
            row.owners.push(owner);
            row.positions
                .push(u16::try_from(i - s).map_err(|_| format!("position {i} does not fit u16"))?);
            row.docs.push(d);
        }
        s = e;
    }
    let pad_doc = u16::try_from(r.seq_lengths.len()).unwrap_or(u16::MAX);
    for k in 0..row_len - n {
        row.tokens.push(EOT);
        row.targets.push(EOT);
        row.weights.push(0.0);
        row.roles.push(0);
        row.owners.push(0);
        row.positions.push(k as u16);
        row.docs.push(pad_doc);
    }
    Ok(row)
}

/// The prepared dataset's tokenizer (`vocab.json`).
fn read_vocab(input: &Path) -> anyhow::Result<(VocabFile, Tokenizer)> {
    let p = input.join("vocab.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: a TRL export reads a prepared dataset (`afm prepare --out DIR`)",
            p.display()
        )
    })?;
    let file: VocabFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let tok = Tokenizer::from_vocab_file(&file).with_context(|| format!("{}", p.display()))?;
    Ok((file, tok))
}

/// Export the prepared dataset in `input` to `out`: `{split}.jsonl` for
/// every split with rows, then [`SIDECAR`].
pub fn write(input: &Path, out: &Path) -> anyhow::Result<Written> {
    if !Shards::exists(input, "train") {
        bail!(
            "{} is not a prepared dataset (no train.index.json): run `afm prepare --input LOGS --out DIR` and export DIR",
            input.display()
        );
    }
    let (vocab, tok) = read_vocab(input)?;
    let agents = tok.roles().agents().to_vec();
    let vocab_size = FIRST_ROLE_TOKEN as usize + agents.len();
    let n_roles = ROLE_FIRST_AGENT as usize + agents.len();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sidecar_path = out.join(SIDECAR);
    match std::fs::remove_file(&sidecar_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", sidecar_path.display())),
    }
    let mut written = Written::default();
    let mut splits = BTreeMap::new();
    let mut row_len = 0;
    for split in SPLITS {
        if !Shards::exists(input, split) {
            continue;
        }
        let shards = Shards::open(input, split)?;
        row_len = row_len.max(shards.index.row_len);
        let name = format!("{split}.jsonl");
        let path = out.join(&name);
        let mut info = SplitInfo {
            file: None,
            rows: shards.rows(),
            documents: 0,
            tokens: 0,
            loss_tokens: 0,
            padding_dropped: 0,
            curriculum: shards.index.curriculum,
            curriculum_stages: shards.index.curriculum_stages,
        };
        if shards.rows() == 0 {
            // No empty file (`datasets` refuses one); an old one goes.
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            splits.insert(split.to_string(), info);
            continue;
        }
        let mut f = AtomicFile::create(&path)?;
        let mut line = Vec::new();
        for r in 0..shards.rows() {
            let where_ = || format!("{}/{split}.*: row {r}", input.display());
            let row = shards.row(r);
            let t = from_row(&row).map_err(|e| anyhow::anyhow!("{}: {e}", where_()))?;
            if let Some(&id) = t.input_ids.iter().find(|&&id| id as usize >= vocab_size) {
                bail!(
                    "{}: token id {id} is outside vocab.json's {vocab_size} ids",
                    where_()
                );
            }
            if let Some(&id) = t
                .agent_ids
                .iter()
                .chain(&t.owner_ids)
                .find(|&&id| id as usize >= n_roles)
            {
                bail!(
                    "{}: role id {id} is outside vocab.json's {n_roles} roles",
                    where_()
                );
            }
            info.documents += t.seq_lengths.len();
            info.tokens += t.input_ids.len();
            info.loss_tokens += t.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
            info.padding_dropped += row.len() - t.input_ids.len();
            line.clear();
            serde_json::to_writer(&mut line, &t)?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        f.commit()?;
        info.file = Some(name);
        written.files.push((path, info.rows));
        splits.insert(split.to_string(), info);
    }
    let mut roles = vec!["(none)".to_string(), "(observation)".to_string()];
    roles.extend(agents.iter().cloned());
    let special_tokens = BTreeMap::from([
        ("<|endoftext|>".to_string(), EOT),
        ("<|task|>".to_string(), TASK),
        ("<|end|>".to_string(), END),
        ("<|obs|>".to_string(), OBS),
    ]);
    let sidecar = Sidecar {
        format: "trl".into(),
        version: 1,
        tokenizer: vocab.bpe.clone(),
        hf_tokenizer: "openai-community/gpt2".into(),
        vocab_size,
        special_tokens,
        first_role_token: FIRST_ROLE_TOKEN,
        agents,
        roles,
        row_len,
        ignore_index: IGNORE_INDEX,
        splits,
        vocab,
    };
    let text = serde_json::to_string_pretty(&sidecar)?;
    atomic::write(&sidecar_path, text + "\n")?;
    written.sidecar = Some(sidecar_path);
    Ok(written)
}
