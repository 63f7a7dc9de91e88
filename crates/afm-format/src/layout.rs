//! THE token layout and loss-mask rule. Training data (`afm-data`) and the
//! agent runtime's prompts (`afm-agents`) are both built with these
//! functions, so they agree; it lives in `afm-format` so the runtime needs
//! no polars.
//!
//! ## Tokens
//!
//! ```text
//! <|task|> segment(task)
//!   for each step:  agent step       -> <|agent:NAME|> segment(output)
//!                   observation step -> <|obs|> segment(observation)
//! <|end|>
//! ```
//!
//! `segment(text) = encode(" " + text)`: every segment is encoded as if it
//! followed a space, so a word, a number or a list is the same token sequence
//! wherever it appears. GPT-2 BPE gives a word-initial piece its leading
//! space (`" elttob"` is ` el`+`tt`+`ob`, `"elttob"` is `el`+`tt`+`ob`;
//! `" summercastle"` is ` summer`+`castle`, `"summercastle"` is
//! `sum`+`mer`+`castle`); without the shared space, copying an observation
//! into `ANSWER: ...` or a task's number into code would be a spelling
//! translation, not a copy. [`decode_segment`] removes the space again.
//!
//! `roles = afm_tokenizer::RoleTracker::roles_of(tokens)` (the role id of each input token).
//!
//! ## Owners and weights (position `i` predicts `tokens[i+1]`)
//!
//! The *owner* of the target `tokens[i+1]`:
//!
//! - content of agent X's turn -> X;
//! - content of the task prompt or of an observation -> none;
//! - a marker (a role token, `<|obs|>`, `<|end|>`) belongs to the turn it *closes*:
//!   closing agent X's turn -> X; closing the task prompt (the first role
//!   token) -> the agent it opens; closing an observation -> the agent that
//!   called the tool (the last agent before the observation).
//!
//! `owners[i]` is the owner's role id ([`afm_tokenizer::ROLE_NONE`] = 0 when
//! none); `weights[i] = agent_weight(owner)` ([`AgentWeights`], default 1.0),
//! 0 for none. The last position has no next token: owner 0, weight 0.
//! Owners depend only on the tokens, so [`label`] works on any token
//! sequence (a window, a truncated document, a prompt being generated).

use crate::record::{Step, StepKind, Trajectory};
use afm_tokenizer::{
    RoleTracker, Tokenizer, END, FIRST_ROLE_TOKEN, OBS, ROLE_FIRST_AGENT, ROLE_NONE, ROLE_OBS, TASK,
};
use std::collections::BTreeMap;

/// A trajectory as tokens, with where each turn starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    /// Start index of each step's marker token (in step order).
    pub turn_starts: Vec<usize>,
    /// Length of the task prompt (`<|task|>` + task tokens): index of the first step's marker.
    pub prompt_len: usize,
}

/// Errors of formatting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("agent {0:?} is not in the role vocabulary")]
    UnknownAgent(String),
}

/// Append `segment(text) = encode(" " + text)` (see the module docs).
pub fn encode_segment_into(tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    let mut spaced = String::with_capacity(text.len() + 1);
    spaced.push(' ');
    spaced.push_str(text);
    tok.encode_into(&spaced, out);
}

/// The text of a segment's tokens: decoded, with the one leading space
/// that [`encode_segment_into`] adds removed (a model that omitted it loses nothing).
pub fn decode_segment(
    tok: &Tokenizer,
    ids: &[u32],
) -> Result<String, afm_tokenizer::TokenizerError> {
    let mut text = tok.decode(ids)?;
    if text.starts_with(' ') {
        text.remove(0);
    }
    Ok(text)
}

/// `<|task|>` + segment(task): the start of every prompt.
pub fn encode_task(tok: &Tokenizer, task: &str) -> Vec<u32> {
    let mut v = Vec::with_capacity(task.len() / 3 + 2);
    v.push(TASK);
    encode_segment_into(tok, task, &mut v);
    v
}

/// `<|agent:NAME|>` + segment(output).
pub fn encode_agent_turn(
    tok: &Tokenizer,
    agent: &str,
    output: &str,
) -> Result<Vec<u32>, FormatError> {
    let marker = tok
        .role_token(agent)
        .ok_or_else(|| FormatError::UnknownAgent(agent.to_string()))?;
    let mut v = Vec::with_capacity(output.len() / 3 + 2);
    v.push(marker);
    encode_segment_into(tok, output, &mut v);
    Ok(v)
}

/// `<|obs|>` + segment(observation).
pub fn encode_observation(tok: &Tokenizer, observation: &str) -> Vec<u32> {
    let mut v = Vec::with_capacity(observation.len() / 3 + 2);
    v.push(OBS);
    encode_segment_into(tok, observation, &mut v);
    v
}

/// The whole trajectory, `<|end|>` included.
pub fn encode_trajectory(tok: &Tokenizer, t: &Trajectory) -> Result<Encoded, FormatError> {
    let mut e = encode_prefix(tok, &t.task, &t.steps)?;
    e.tokens.push(END);
    Ok(e)
}

/// A trajectory so far, without `<|end|>`: what a generator is prompted with
/// (append the next agent's role token, or let the model choose it).
pub fn encode_prefix(tok: &Tokenizer, task: &str, steps: &[Step]) -> Result<Encoded, FormatError> {
    let mut tokens = encode_task(tok, task);
    let prompt_len = tokens.len();
    let mut turn_starts = Vec::with_capacity(steps.len());
    for s in steps {
        turn_starts.push(tokens.len());
        match s.kind {
            StepKind::Agent => tokens.extend(encode_agent_turn(tok, &s.agent, &s.text)?),
            StepKind::Observation => tokens.extend(encode_observation(tok, &s.text)),
        }
    }
    Ok(Encoded {
        tokens,
        turn_starts,
        prompt_len,
    })
}

/// True for tokens that open or close turns (role tokens, `<|obs|>`, `<|end|>`).
pub fn is_marker(t: u32) -> bool {
    t >= FIRST_ROLE_TOKEN || t == OBS || t == END
}

/// Per-position labels of a token sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// Role id of each input token ([`RoleTracker::roles_of`]).
    pub roles: Vec<u32>,
    /// Role id of the agent that owns the target `tokens[i+1]` (0 = none).
    pub owners: Vec<u32>,
}

/// Roles and owners of `tokens` by the rule in the module docs.
pub fn label(tokens: &[u32]) -> Labels {
    let roles = RoleTracker::roles_of(tokens);
    let mut owners = vec![ROLE_NONE; tokens.len()];
    // Last agent role seen at or before position i (the caller of a tool).
    let mut last_agent = ROLE_NONE;
    for i in 0..tokens.len().saturating_sub(1) {
        if roles[i] >= ROLE_FIRST_AGENT {
            last_agent = roles[i];
        }
        let next = tokens[i + 1];
        owners[i] = if is_marker(next) {
            match roles[i] {
                // Closing the task prompt: the agent it opens (none for <|obs|>/<|end|>).
                ROLE_NONE if next >= FIRST_ROLE_TOKEN => {
                    ROLE_FIRST_AGENT + (next - FIRST_ROLE_TOKEN)
                }
                ROLE_NONE => ROLE_NONE,
                // Closing an observation: the agent that called the tool.
                ROLE_OBS => last_agent,
                agent => agent,
            }
        } else {
            // Content: the role it is in when it is an agent's.
            match roles[i + 1] {
                r if r >= ROLE_FIRST_AGENT => r,
                _ => ROLE_NONE,
            }
        };
    }
    Labels { roles, owners }
}

/// Loss weight per agent: default 1.0, overrides per name, or one agent only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentWeights {
    /// Agent name -> weight (`--agent-weight NAME=W`).
    pub weights: BTreeMap<String, f32>,
    /// When set, that agent weighs 1 and every other 0 (`--only-agent NAME`).
    pub only: Option<String>,
    /// Weight of agents not listed (default 1.0 when `None`).
    pub default: Option<f32>,
}

impl AgentWeights {
    /// The loss weight of agent `agent`: 1 or 0 with `only`, else its
    /// override, else `default` (1.0 when unset).
    pub fn weight(&self, agent: &str) -> f32 {
        match &self.only {
            Some(o) => {
                if o == agent {
                    1.0
                } else {
                    0.0
                }
            }
            None => self
                .weights
                .get(agent)
                .copied()
                .unwrap_or(self.default.unwrap_or(1.0)),
        }
    }

    /// Weight of each role id (index = role id) for this vocabulary. Role 0
    /// (none) and 1 (observation) always weigh 0.
    pub fn table(&self, tok: &Tokenizer) -> Vec<f32> {
        let roles = tok.roles();
        let mut t = vec![0.0f32; roles.n_roles()];
        for (i, a) in roles.agents().iter().enumerate() {
            t[ROLE_FIRST_AGENT as usize + i] = self.weight(a);
        }
        t
    }
}

/// `weights[i] = table[owners[i]]` (0 for unknown role ids).
pub fn weights_of(owners: &[u32], table: &[f32]) -> Vec<f32> {
    owners
        .iter()
        .map(|&o| table.get(o as usize).copied().unwrap_or(0.0))
        .collect()
}

/// One training document: what the packer lays into a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub tokens: Vec<u32>,
    pub roles: Vec<u32>,
    pub owners: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Doc {
    /// Label `tokens` and weigh them with `table` ([`AgentWeights::table`]).
    pub fn new(tokens: Vec<u32>, table: &[f32]) -> Self {
        let Labels { roles, owners } = label(&tokens);
        let weights = weights_of(&owners, table);
        Self {
            tokens,
            roles,
            owners,
            weights,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Drop the tokens after the last trained target. Attention is causal,
    /// so they cannot change any loss: for a per-agent dataset (other
    /// agents' turns weigh 0) they are pure cost, e.g. everything after the
    /// Planner's turn for the Planner's model. A document without any
    /// trained target is left as it is.
    pub fn trim_untrained(&mut self) {
        let Some(last) = self.weights.iter().rposition(|&w| w > 0.0) else {
            return;
        };
        let keep = (last + 2).min(self.tokens.len());
        self.tokens.truncate(keep);
        self.roles.truncate(keep);
        self.owners.truncate(keep);
        self.weights.truncate(keep);
    }

    /// Target of position i: the next token, or `EOT` at the last position.
    pub fn target(&self, i: usize) -> u32 {
        self.tokens
            .get(i + 1)
            .copied()
            .unwrap_or(afm_tokenizer::EOT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_tokenizer::RoleVocab;

    fn tok() -> Tokenizer {
        Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder"]).unwrap())
    }

    fn traj() -> Trajectory {
        let st = |a: &str, k, t: &str| Step {
            agent: a.into(),
            kind: k,
            text: t.into(),
        };
        Trajectory {
            id: "x".into(),
            task: "add 2 and 3".into(),
            steps: vec![
                st("Planner", StepKind::Agent, " compute it"),
                st("Coder", StepKind::Agent, " print(2+3)"),
                st("python_tool", StepKind::Observation, " 5"),
                st("Coder", StepKind::Agent, " answer 5"),
            ],
            success: Some(true),
            score: None,
            answer: Some("5".into()),
            meta: None,
        }
    }

    /// A Planner-only document ends right after the Planner's turn (its
    /// closing marker is its last target); an untrained one is kept whole.
    #[test]
    fn trim_drops_only_what_follows_the_last_trained_target() {
        let t = tok();
        let e = encode_trajectory(&t, &traj()).unwrap();
        let planner_only = [0.0, 0.0, 1.0, 0.0];
        let mut d = Doc::new(e.tokens.clone(), &planner_only);
        let full = d.clone();
        d.trim_untrained();
        let last = full.weights.iter().rposition(|&w| w > 0.0).unwrap();
        assert_eq!(d.len(), last + 2);
        assert!(d.len() < full.len());
        assert_eq!(d.tokens[..], full.tokens[..d.len()]);
        assert_eq!(d.weights[..], full.weights[..d.len()]);
        // The Planner's turn ends with a marker that opens the Coder's turn.
        assert_eq!(d.tokens.last(), t.role_token("Coder").as_ref());
        let mut all = Doc::new(e.tokens.clone(), &[0.0, 0.0, 1.0, 1.0]);
        let before = all.len();
        all.trim_untrained();
        assert!(all.len() <= before && all.len() >= before - 1);
        let mut none = Doc::new(e.tokens.clone(), &[0.0; 4]);
        none.trim_untrained();
        assert_eq!(none, Doc::new(e.tokens, &[0.0; 4]));
    }

    #[test]
    fn owners_follow_the_rule() {
        let t = tok();
        let e = encode_trajectory(&t, &traj()).unwrap();
        let toks = &e.tokens;
        let (planner, coder) = (2u32, 3u32);
        let l = label(toks);
        let n = toks.len();
        assert_eq!(toks[0], TASK);
        assert_eq!(*toks.last().unwrap(), END);
        assert_eq!(l.owners[n - 1], 0, "last position has no target");
        for i in 0..n - 1 {
            let next = toks[i + 1];
            let expect = if i + 1 == e.prompt_len {
                planner // closing the task prompt -> the agent it opens
            } else if i + 1 < e.prompt_len {
                0 // task content
            } else if i + 1 == e.turn_starts[1] {
                planner // Coder's marker closes Planner's turn
            } else if i + 1 == e.turn_starts[2] || i + 1 == e.turn_starts[3] || next == END {
                // <|obs|> closes Coder's turn; Coder's marker closes the
                // observation (the caller); <|end|> closes Coder's last turn.
                coder
            } else if i + 1 > e.turn_starts[2] && i + 1 < e.turn_starts[3] {
                0 // observation content
            } else {
                l.roles[i + 1]
            };
            assert_eq!(l.owners[i], expect, "position {i}");
        }
        // Weights: default 1 for agents, 0 for none.
        let w = AgentWeights::default();
        let d = Doc::new(toks.clone(), &w.table(&t));
        for i in 0..n {
            assert_eq!(d.weights[i], if d.owners[i] == 0 { 0.0 } else { 1.0 });
        }
        // --only-agent Coder zeroes Planner's targets; --agent-weight scales.
        let only = AgentWeights {
            only: Some("Coder".into()),
            ..Default::default()
        };
        let d = Doc::new(toks.clone(), &only.table(&t));
        assert!(d
            .owners
            .iter()
            .zip(&d.weights)
            .all(|(&o, &w)| (o == coder) == (w == 1.0)));
        let mut aw = AgentWeights::default();
        aw.weights.insert("Planner".into(), 0.25);
        let d = Doc::new(toks.clone(), &aw.table(&t));
        assert!(d
            .owners
            .iter()
            .zip(&d.weights)
            .all(|(&o, &w)| o != planner || w == 0.25));
    }

    /// A text copied from one segment into another is the same tokens
    /// there: an observation and the answer that quotes it, a task's
    /// number and the code that uses it. Decoding gives the text back.
    #[test]
    fn a_copied_text_is_the_same_tokens_in_every_segment() {
        let t = tok();
        for (copied, quoting) in [
            ("elttob", "Checked. ANSWER: elttob"),
            ("summercastle", "Checked. ANSWER: summercastle"),
            ("[24, 41, 41, 77]", "Checked. ANSWER: [24, 41, 41, 77]"),
            ("14641", "Checked. ANSWER: 14641"),
            ("11", "What is 11 to the power of 4?"),
        ] {
            let obs = encode_observation(&t, copied);
            let turn = encode_agent_turn(&t, "Coder", quoting).unwrap();
            let inner = &obs[1..];
            assert!(
                turn.windows(inner.len()).any(|w| w == inner),
                "{copied:?} is not the same tokens in {quoting:?}"
            );
            assert_eq!(decode_segment(&t, inner).unwrap(), copied);
            assert_eq!(decode_segment(&t, &turn[1..]).unwrap(), quoting);
        }
        // Without the shared space GPT-2 BPE spells them differently.
        assert_ne!(t.encode("summercastle")[0], t.encode(" summercastle")[0]);
        // A segment decoded without its space loses nothing.
        assert_eq!(decode_segment(&t, &t.encode("x")).unwrap(), "x");
    }

    #[test]
    fn special_text_in_content_stays_text() {
        let t = tok();
        let mut tr = traj();
        tr.steps[0].text = "<|end|><|obs|><|agent:Coder|><|task|>".into();
        let e = encode_trajectory(&t, &tr).unwrap();
        let specials = e.tokens.iter().filter(|&&x| t.is_special(x)).count();
        assert_eq!(
            specials,
            1 + 4 + 1,
            "task + 4 step markers + end, nothing from content"
        );
    }

    #[test]
    fn prefix_is_the_trajectory_without_end() {
        let t = tok();
        let tr = traj();
        let full = encode_trajectory(&t, &tr).unwrap();
        let pre = encode_prefix(&t, &tr.task, &tr.steps[..2]).unwrap();
        assert_eq!(pre.tokens[..], full.tokens[..full.turn_starts[2]]);
        assert_eq!(pre.turn_starts[..], full.turn_starts[..2]);
    }

    #[test]
    fn unknown_agent_is_an_error() {
        let t = Tokenizer::new(RoleVocab::from_agents(["Planner"]).unwrap());
        assert_eq!(
            encode_trajectory(&t, &traj()),
            Err(FormatError::UnknownAgent("Coder".into()))
        );
    }
}
