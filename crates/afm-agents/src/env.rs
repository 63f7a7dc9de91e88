//! The task environment, from `afm-tasks`: tasks, the interpreter tool,
//! answer extraction, verification, agent names, and what counts as a
//! well-formed turn of each agent.

use afm_tasks::lang::parse;
pub use afm_tasks::{
    extract_answer, verify, Limits, Task, Turn, CODER, INTERPRETER as TOOL_AGENT, PLANNER,
    REVIEWER, REVISE_MARKER,
};

/// One tool call's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The observation text (`afm_tasks::observation_text`).
    pub text: String,
    /// The program parsed and ran without error.
    pub ok: bool,
}

/// Run the interpreter on a program (the Coder's turn text) under `limits`.
pub fn run_tool(program: &str, limits: &Limits) -> ToolResult {
    let result = afm_tasks::run_program(program, limits);
    ToolResult {
        text: afm_tasks::observation_text(&result, limits),
        ok: result.is_ok(),
    }
}

/// Whether an agent turn is well-formed:
///
/// - Planner: a non-empty plan (afm-tasks has no plan grammar);
/// - Coder: a program that parses in the tool language;
/// - Reviewer: a final answer (`ANSWER: ...`) or a revision request
///   (`REVISE: ...`);
/// - any other agent: non-empty text.
///
/// Tool calls are counted separately by whether the program ran.
pub fn turn_valid(agent: &str, text: &str) -> bool {
    match agent {
        CODER => parse(text, &Limits::default()).is_ok(),
        REVIEWER => extract_answer(text).is_some() || text.contains(REVISE_MARKER),
        _ => !text.trim().is_empty(),
    }
}
