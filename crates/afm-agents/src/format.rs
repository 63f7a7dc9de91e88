//! Token layout of prompts and contexts: the one FORMAT rule
//! (`afm_format::layout`), applied.
//!
//! A trajectory is `<|task|>` + segment(task) + per step
//! (`<|agent:X|>` + segment(output) | `<|obs|>` + segment(observation)) +
//! `<|end|>`. The runtimes build every prompt and context through
//! `afm_format::layout`, so inference sees exactly the layout training saw.

use afm_format::layout::{encode_agent_turn, encode_observation, encode_task};
use afm_tokenizer::Tokenizer;
use anyhow::{anyhow, Result};

/// `<|task|>` + segment(task text): the AFM prompt and the start of every MAS context.
pub fn task_prompt(tok: &Tokenizer, task: &str) -> Vec<u32> {
    encode_task(tok, task)
}

/// The role token `<|agent:NAME|>`; an error when the model's role
/// vocabulary lacks the agent.
pub fn role_token(tok: &Tokenizer, agent: &str) -> Result<u32> {
    tok.role_token(agent).ok_or_else(|| {
        anyhow!(
            "agent {agent:?} is not in the model's role vocabulary {:?}",
            tok.roles().agents()
        )
    })
}

/// `<|agent:NAME|>` + segment(output).
pub fn agent_turn(tok: &Tokenizer, agent: &str, output: &str) -> Result<Vec<u32>> {
    Ok(encode_agent_turn(tok, agent, output)?)
}

/// `<|obs|>` + segment(observation).
pub fn observation(tok: &Tokenizer, text: &str) -> Vec<u32> {
    encode_observation(tok, text)
}
