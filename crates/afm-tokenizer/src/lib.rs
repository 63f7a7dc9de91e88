//! The afm tokenizer: GPT-2's byte-level BPE (`r50k_base`, shipped inside
//! `tiktoken-rs`, nothing downloaded) plus the special tokens afm adds after
//! GPT-2's last id (50256, `<|endoftext|>`).
//!
//! Layout of the id space:
//!
//! | ids              | meaning                                             |
//! |------------------|-----------------------------------------------------|
//! | 0 ..= 50255      | GPT-2 BPE tokens                                    |
//! | 50256            | `<|endoftext|>` (GPT-2's own)                       |
//! | 50257            | `<|task|>`: the task prompt starts                  |
//! | 50258            | `<|end|>`: the trajectory is finished               |
//! | 50259            | `<|obs|>`: a tool observation follows (not trained) |
//! | 50260 + i        | `<|agent:NAME|>` for the i-th agent of [`RoleVocab`]|
//!
//! The role vocabulary is *open*: it is built from the data (real logs have
//! dozens of agent names) and saved with every checkpoint as a
//! [`VocabFile`]. Role ids (what the model's role-embedding table is
//! indexed by) are separate from token ids: [`ROLE_NONE`] for the task
//! prompt and structural tokens, [`ROLE_OBS`] for observations, and
//! `ROLE_FIRST_AGENT + i` for agent `i`.
//!
//! Safety rule: [`Tokenizer::encode`] never produces a special token. Text
//! such as `<|end|>` typed by a user stays plain text; special tokens are
//! only ever inserted by id, by the code that formats trajectories.
//!
//! Speed: [`Tokenizer::encode`] gives exactly the ids of tiktoken's
//! `CoreBPE::encode_ordinary` (`r50k_base`) but does not run tiktoken's
//! fancy-regex split. It uses a hand-written pre-tokenizer ([`pieces`],
//! the same pieces as tiktoken's pattern, Unicode classes from the same
//! `regex-syntax` tables), one hash lookup per piece that is a whole token,
//! a bounded per-thread cache for pieces that are not, and tiktoken's
//! byte-pair merge for the rest. See the crate README for how exactness is
//! argued and tested, and for measured speed.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tiktoken_rs::CoreBPE;

pub mod atomic;
mod bpe;
mod corpus;
mod pretok;
pub use corpus::CorpusVocab;

pub use pretok::{pieces, Pieces};

/// GPT-2's `<|endoftext|>`.
pub const EOT: u32 = 50256;
/// `<|task|>`: the task prompt follows.
pub const TASK: u32 = 50257;
/// `<|end|>`: end of the trajectory (the generation stop token).
pub const END: u32 = 50258;
/// `<|obs|>`: a tool observation follows; the model emits it to call the tool.
pub const OBS: u32 = 50259;
/// Id of the first agent-role token.
pub const FIRST_ROLE_TOKEN: u32 = 50260;
/// Number of GPT-2 BPE ids including `<|endoftext|>` (50257).
pub const GPT2_VOCAB: usize = 50257;

/// Role id of the task prompt and of structural tokens outside any agent turn.
pub const ROLE_NONE: u32 = 0;
/// Role id of tool observations.
pub const ROLE_OBS: u32 = 1;
/// Role id of the first agent in the [`RoleVocab`].
pub const ROLE_FIRST_AGENT: u32 = 2;

/// Errors of the tokenizer and the role vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("agent name {0:?} is not allowed: {1}")]
    BadAgentName(String, &'static str),
    #[error("agent {0:?} appears twice in the role vocabulary")]
    DuplicateAgent(String),
    #[error("token id {0} is outside the vocabulary (size {1})")]
    UnknownId(u32, usize),
    #[error("vocabulary file: {0}")]
    File(String),
}

/// The ordered, open set of agent names. Agent `i` has token
/// `FIRST_ROLE_TOKEN + i` and role id `ROLE_FIRST_AGENT + i`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleVocab {
    agents: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

impl RoleVocab {
    /// An empty vocabulary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build from names in order; duplicates and bad names are errors.
    pub fn from_agents<I, S>(agents: I) -> Result<Self, TokenizerError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v = Self::new();
        for a in agents {
            let a = a.into();
            if v.index.contains_key(&a) {
                return Err(TokenizerError::DuplicateAgent(a));
            }
            v.insert(&a)?;
        }
        Ok(v)
    }

    /// Add `agent` if new; returns its index in the vocabulary.
    pub fn insert(&mut self, agent: &str) -> Result<u32, TokenizerError> {
        if let Some(&i) = self.index.get(agent) {
            return Ok(i);
        }
        validate_agent_name(agent)?;
        let i = self.agents.len() as u32;
        self.agents.push(agent.to_string());
        self.index.insert(agent.to_string(), i);
        Ok(i)
    }

    /// Index of `agent` in the vocabulary.
    pub fn index_of(&self, agent: &str) -> Option<u32> {
        self.index.get(agent).copied()
    }

    /// Role id (for role embeddings) of `agent`.
    pub fn role_id(&self, agent: &str) -> Option<u32> {
        self.index_of(agent).map(|i| ROLE_FIRST_AGENT + i)
    }

    /// Token id of `<|agent:NAME|>`.
    pub fn token(&self, agent: &str) -> Option<u32> {
        self.index_of(agent).map(|i| FIRST_ROLE_TOKEN + i)
    }

    /// Agent names in order.
    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// True when no agent is known.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Number of role ids in use (`ROLE_FIRST_AGENT + len`): the minimum
    /// size of a model's role-embedding table.
    pub fn n_roles(&self) -> usize {
        ROLE_FIRST_AGENT as usize + self.agents.len()
    }

    /// Agent name of a role id, if it is an agent's.
    pub fn agent_of_role(&self, role: u32) -> Option<&str> {
        role.checked_sub(ROLE_FIRST_AGENT)
            .and_then(|i| self.agents.get(i as usize))
            .map(String::as_str)
    }

    fn rebuild_index(&mut self) {
        self.index = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i as u32))
            .collect();
    }
}

/// Agent names become token text `<|agent:NAME|>`: keep them printable and
/// free of the delimiters.
fn validate_agent_name(name: &str) -> Result<(), TokenizerError> {
    let bad = |why| Err(TokenizerError::BadAgentName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 128 {
        return bad("longer than 128 bytes");
    }
    if name.contains("|>") || name.contains("<|") {
        return bad("contains `<|` or `|>`");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// What is saved beside every checkpoint and dataset: the special tokens and
/// the role vocabulary, so ids mean the same thing everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabFile {
    /// Always `"r50k_base"`.
    pub bpe: String,
    pub eot: u32,
    pub task: u32,
    pub end: u32,
    pub obs: u32,
    pub first_role_token: u32,
    /// Agent names in role order.
    pub agents: Vec<String>,
    /// The corpus vocabulary's kept BPE ids (see [`CorpusVocab`]); absent
    /// for the full GPT-2 table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<Vec<u32>>,
}

/// GPT-2 BPE plus afm's special tokens and a role vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    /// tiktoken's `r50k_base` (decoding).
    bpe: &'static CoreBPE,
    /// The fast exact encoder over the same ranks.
    fast: &'static bpe::FastBpe,
    roles: RoleVocab,
    /// Which BPE ids the model has rows for (None: all of GPT-2's).
    corpus: Option<CorpusVocab>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("bpe", &"r50k_base")
            .field("roles", &self.roles.agents)
            .field("corpus", &self.corpus.as_ref().map(CorpusVocab::n_bpe))
            .finish()
    }
}

impl Tokenizer {
    /// GPT-2 BPE with the given role vocabulary.
    pub fn new(roles: RoleVocab) -> Self {
        Self {
            bpe: tiktoken_rs::r50k_base_singleton(),
            fast: bpe::FastBpe::r50k(),
            roles,
            corpus: None,
        }
    }

    /// This tokenizer restricted to a corpus vocabulary: the model gets
    /// rows only for its BPE ids, and [`Tokenizer::encode`] writes other
    /// tokens as their bytes (see [`CorpusVocab`]).
    pub fn with_corpus(mut self, corpus: CorpusVocab) -> Self {
        self.corpus = Some(corpus);
        self
    }

    /// The corpus vocabulary, if any.
    pub fn corpus(&self) -> Option<&CorpusVocab> {
        self.corpus.as_ref()
    }

    /// Model row of token `id` (embedding row, LM-head output column);
    /// `None` for an id without a row. Rows equal ids without a corpus
    /// vocabulary.
    pub fn row(&self, id: u32) -> Option<u32> {
        let n_special = FIRST_ROLE_TOKEN + self.roles.len() as u32;
        match &self.corpus {
            None => (id < n_special).then_some(id),
            Some(c) if id < EOT => c.bpe_row(id),
            Some(c) => (id < n_special).then(|| c.n_bpe() as u32 + (id - EOT)),
        }
    }

    /// Token id of model row `row` (inverse of [`Tokenizer::row`]).
    pub fn id_of_row(&self, row: u32) -> Option<u32> {
        if row as usize >= self.n_vocab() {
            return None;
        }
        match &self.corpus {
            None => Some(row),
            Some(c) => {
                let nb = c.n_bpe() as u32;
                Some(if row < nb {
                    c.kept()[row as usize]
                } else {
                    EOT + (row - nb)
                })
            }
        }
    }

    /// GPT-2 BPE with no agent roles (yet).
    pub fn gpt2() -> Self {
        Self::new(RoleVocab::new())
    }

    /// The role vocabulary.
    pub fn roles(&self) -> &RoleVocab {
        &self.roles
    }

    /// Mutable role vocabulary (to add agents while reading data).
    pub fn roles_mut(&mut self) -> &mut RoleVocab {
        &mut self.roles
    }

    /// Vocabulary size in model rows: BPE (all of GPT-2's, or the corpus
    /// vocabulary's) + `<|endoftext|>` + 3 afm specials + one token per agent.
    pub fn n_vocab(&self) -> usize {
        let bpe = self
            .corpus
            .as_ref()
            .map_or(EOT as usize, CorpusVocab::n_bpe);
        bpe + (FIRST_ROLE_TOKEN - EOT) as usize + self.roles.len()
    }

    /// Encode text as plain BPE. Never yields a special token, whatever the
    /// text contains (`<|end|>` in user content stays text).
    ///
    /// The ids are exactly tiktoken's `CoreBPE::encode_ordinary` for
    /// `r50k_base` (the same ids as OpenAI's GPT-2 tokenizer).
    ///
    /// With a corpus vocabulary, BPE tokens outside it are written as their
    /// bytes' tokens (the same text when decoded).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_into(text, &mut out);
        out
    }

    /// [`Tokenizer::encode`] appending to `out` (reuse one buffer across
    /// texts).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match &self.corpus {
            None => self.fast.encode_into(text, out),
            Some(c) => {
                let mut ids = Vec::with_capacity(text.len() / 4 + 1);
                self.fast.encode_into(text, &mut ids);
                c.byte_fallback(&mut ids);
                out.extend(ids);
            }
        }
    }

    /// The same ids as [`Tokenizer::encode`], computed by tiktoken-rs'
    /// `CoreBPE::encode_ordinary` (the Rust core of tiktoken-python): the
    /// reference the fast encoder is tested and benchmarked against. Slower.
    pub fn encode_tiktoken(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// [`Tokenizer::encode`] of every text, in parallel on rayon's pool;
    /// the result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Token id of `<|agent:NAME|>`.
    pub fn role_token(&self, agent: &str) -> Option<u32> {
        self.roles.token(agent)
    }

    /// Agent of a role token id.
    pub fn token_agent(&self, id: u32) -> Option<&str> {
        id.checked_sub(FIRST_ROLE_TOKEN)
            .and_then(|i| self.roles.agents.get(i as usize))
            .map(String::as_str)
    }

    /// True for `<|endoftext|>`, the afm specials and role tokens.
    pub fn is_special(&self, id: u32) -> bool {
        id >= EOT
    }

    /// Text form of a special token (`<|task|>`, `<|agent:Coder|>`...).
    pub fn special_text(&self, id: u32) -> Option<String> {
        match id {
            EOT => Some("<|endoftext|>".into()),
            TASK => Some("<|task|>".into()),
            END => Some("<|end|>".into()),
            OBS => Some("<|obs|>".into()),
            _ => self.token_agent(id).map(|a| format!("<|agent:{a}|>")),
        }
    }

    /// Bytes of one token (specials as their text form).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        if let Some(s) = self.special_text(id) {
            return Ok(s.into_bytes());
        }
        if (id as usize) < GPT2_VOCAB {
            return self
                .bpe
                .decode_bytes(&[id])
                .map_err(|_| TokenizerError::UnknownId(id, self.n_vocab()));
        }
        Err(TokenizerError::UnknownId(id, self.n_vocab()))
    }

    /// Decode to bytes; specials render as their text form. Errors on ids
    /// outside the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        let mut run_start = 0;
        // Decode maximal runs of plain BPE in one call, specials one by one.
        for (i, &id) in ids.iter().enumerate() {
            if (id as usize) >= GPT2_VOCAB - 1 {
                if run_start < i {
                    out.extend(self.plain_bytes(&ids[run_start..i])?);
                }
                out.extend(self.token_bytes(id)?);
                run_start = i + 1;
            }
        }
        if run_start < ids.len() {
            out.extend(self.plain_bytes(&ids[run_start..])?);
        }
        Ok(out)
    }

    fn plain_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        self.bpe.decode_bytes(ids).map_err(|_| {
            let bad = ids
                .iter()
                .copied()
                .find(|&i| self.bpe.decode_bytes(&[i]).is_err())
                .unwrap_or(ids[0]);
            TokenizerError::UnknownId(bad, self.n_vocab())
        })
    }

    /// Decode to text. Byte sequences cut inside a UTF-8 character (possible
    /// with sampled tokens) become U+FFFD; for text made by [`encode`] this
    /// round-trips exactly.
    ///
    /// [`encode`]: Tokenizer::encode
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The file saved with checkpoints and datasets.
    pub fn vocab_file(&self) -> VocabFile {
        VocabFile {
            bpe: "r50k_base".into(),
            eot: EOT,
            task: TASK,
            end: END,
            obs: OBS,
            first_role_token: FIRST_ROLE_TOKEN,
            agents: self.roles.agents.clone(),
            corpus: self.corpus.as_ref().map(|c| c.kept().to_vec()),
        }
    }

    /// Rebuild from a saved [`VocabFile`], checking it matches this build.
    pub fn from_vocab_file(v: &VocabFile) -> Result<Self, TokenizerError> {
        if v.bpe != "r50k_base" {
            return Err(TokenizerError::File(format!(
                "bpe {:?} is not supported (only r50k_base)",
                v.bpe
            )));
        }
        let expect = (EOT, TASK, END, OBS, FIRST_ROLE_TOKEN);
        let got = (v.eot, v.task, v.end, v.obs, v.first_role_token);
        if expect != got {
            return Err(TokenizerError::File(format!(
                "special token ids {got:?} differ from this build's {expect:?}"
            )));
        }
        let mut roles = RoleVocab::from_agents(v.agents.iter().cloned())?;
        roles.rebuild_index();
        let tok = Self::new(roles);
        Ok(match &v.corpus {
            None => tok,
            Some(kept) => {
                tok.with_corpus(CorpusVocab::from_kept(kept.clone()).map_err(TokenizerError::File)?)
            }
        })
    }

    /// JSON text of [`Tokenizer::vocab_file`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.vocab_file()).unwrap_or_default()
    }

    /// Parse the JSON written by [`Tokenizer::to_json`].
    pub fn from_json(text: &str) -> Result<Self, TokenizerError> {
        let v: VocabFile =
            serde_json::from_str(text).map_err(|e| TokenizerError::File(e.to_string()))?;
        Self::from_vocab_file(&v)
    }
}

/// The one rule for which role id each *input* position carries (what the
/// role-embedding table is indexed by). Feed tokens in order; a marker
/// token takes the role it opens:
///
/// - `<|task|>` and `<|endoftext|>` open [`ROLE_NONE`];
/// - `<|obs|>` opens [`ROLE_OBS`];
/// - `<|agent:X|>` opens X's role id;
/// - `<|end|>` keeps the current role (it closes the last turn);
/// - any other token keeps the current role.
///
/// The data stage uses it to label training rows and the generators use it
/// to label tokens they sample, so training and inference agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleTracker {
    current: u32,
}

impl Default for RoleTracker {
    fn default() -> Self {
        Self { current: ROLE_NONE }
    }
}

impl RoleTracker {
    /// Starts in [`ROLE_NONE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The role of the last token fed.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Role id of `token` placed next in the sequence.
    pub fn next(&mut self, token: u32) -> u32 {
        self.current = match token {
            TASK | EOT => ROLE_NONE,
            OBS => ROLE_OBS,
            END => self.current,
            t if t >= FIRST_ROLE_TOKEN => ROLE_FIRST_AGENT + (t - FIRST_ROLE_TOKEN),
            _ => self.current,
        };
        self.current
    }

    /// Role ids of a whole sequence, starting from [`ROLE_NONE`].
    pub fn roles_of(tokens: &[u32]) -> Vec<u32> {
        let mut t = Self::new();
        tokens.iter().map(|&x| t.next(x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap())
    }

    #[test]
    fn gpt2_ids_match_reference() {
        // Reference ids from OpenAI's GPT-2 tokenizer.
        assert_eq!(tok().encode("Hello world"), vec![15496, 995]);
        assert_eq!(tok().encode(" the"), vec![262]);
    }

    /// A corpus vocabulary: rows for the kept BPE ids, the specials and the
    /// roles; other tokens encode as bytes and decode to the same text; the
    /// vocabulary file round-trips.
    #[test]
    fn corpus_vocabulary_rows_and_byte_fallback() {
        let full = tok();
        let text = "Hello world, reverse \"bottle\" ✓";
        let seen = full.encode("Hello world");
        let t = tok().with_corpus(CorpusVocab::from_ids(seen.iter().copied()));
        assert_eq!(t.n_vocab(), 256 + 2 + 4 + 3);
        // Kept tokens keep their ids; the rest falls back to byte tokens.
        assert_eq!(t.encode("Hello world"), seen);
        let ids = t.encode(text);
        assert!(ids.len() > full.encode(text).len());
        assert!(ids.iter().all(|&i| t.row(i).is_some()), "{ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), text);
        // Rows and ids are inverse maps over the whole row range.
        for r in 0..t.n_vocab() as u32 {
            let id = t.id_of_row(r).unwrap();
            assert_eq!(t.row(id), Some(r), "row {r} id {id}");
        }
        assert_eq!(t.id_of_row(t.n_vocab() as u32), None);
        assert_eq!(t.row(t.role_token("Reviewer").unwrap()), Some(264));
        assert_eq!(t.row(END), Some(260));
        assert_eq!(t.row(FIRST_ROLE_TOKEN + 3), None);
        assert_eq!(t.row(262), None); // " the": not in this corpus
                                      // Without a corpus vocabulary rows are ids.
        assert_eq!(full.row(262), Some(262));
        assert_eq!(full.id_of_row(END), Some(END));
        // Saved and loaded with the vocabulary file.
        let back = Tokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(back.corpus(), t.corpus());
        assert_eq!(back.n_vocab(), t.n_vocab());
        assert!(Tokenizer::from_json(&full.to_json())
            .unwrap()
            .corpus()
            .is_none());
        assert!(!full.to_json().contains("corpus"));
    }

    #[test]
    fn round_trip_exact() {
        let t = tok();
        for s in [
            "",
            "plain ascii",
            "naïve café — ünïcödé 漢字 🙂🙂",
            "  leading and trailing spaces \n\n\t",
            "def f(x):\n    return x ** 2  # comment",
        ] {
            assert_eq!(t.decode(&t.encode(s)).unwrap(), s);
        }
    }

    #[test]
    fn special_text_in_content_stays_text() {
        let t = tok();
        for s in [
            "<|end|>",
            "<|endoftext|>",
            "<|task|>",
            "<|obs|>",
            "<|agent:Coder|>",
        ] {
            let ids = t.encode(s);
            assert!(ids.iter().all(|&i| !t.is_special(i)), "{s} -> {ids:?}");
            assert!(ids.len() > 1);
            assert_eq!(t.decode(&ids).unwrap(), s);
        }
    }

    #[test]
    fn specials_and_roles() {
        let t = tok();
        assert_eq!(t.n_vocab(), 50263);
        assert_eq!(t.role_token("Coder"), Some(50261));
        assert_eq!(t.token_agent(50262), Some("Reviewer"));
        assert_eq!(t.roles().role_id("Planner"), Some(ROLE_FIRST_AGENT));
        assert_eq!(t.roles().agent_of_role(3), Some("Coder"));
        let ids = [TASK, 15496, 50261, 995, OBS, END];
        assert_eq!(
            t.decode(&ids).unwrap(),
            "<|task|>Hello<|agent:Coder|> world<|obs|><|end|>"
        );
        assert!(matches!(
            t.decode(&[50263]),
            Err(TokenizerError::UnknownId(50263, _))
        ));
    }

    #[test]
    fn role_tracker_rule() {
        let t = tok();
        let coder = t.role_token("Coder").unwrap();
        let seq = [TASK, 10, coder, 11, OBS, 12, END];
        assert_eq!(RoleTracker::roles_of(&seq), vec![0, 0, 3, 3, 1, 1, 1]);
    }

    #[test]
    fn vocab_file_round_trip_and_validation() {
        let t = tok();
        let back = Tokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(back.roles().agents(), t.roles().agents());
        assert_eq!(back.role_token("Reviewer"), Some(50262));
        let mut v = t.vocab_file();
        v.obs = 1;
        assert!(Tokenizer::from_vocab_file(&v).is_err());
        assert!(RoleVocab::from_agents(["a", "a"]).is_err());
        assert!(RoleVocab::from_agents(["bad|>name"]).is_err());
        assert!(RoleVocab::from_agents([""]).is_err());
    }
}
