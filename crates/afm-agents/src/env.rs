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
    /// The tool itself failed (it panicked): the task fails with this reason.
    pub internal: Option<String>,
}

/// The tool both runtimes call: parse and run a program under limits.
/// [`Tool::default`] is the interpreter, `afm_tasks::run_program`; tests
/// inject others (a tool that panics, to prove containment).
#[derive(Clone, Copy)]
pub struct Tool(pub fn(&str, &Limits) -> Result<afm_tasks::Value, afm_tasks::ToolError>);

impl Default for Tool {
    fn default() -> Self {
        Tool(afm_tasks::run_program)
    }
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if std::ptr::fn_addr_eq(self.0, Tool::default().0) {
            f.write_str("Tool(interpreter)")
        } else {
            f.write_str("Tool(custom)")
        }
    }
}

impl PartialEq for Tool {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

/// Run the interpreter on a program (the Coder's turn text) under `limits`.
pub fn run_tool(program: &str, limits: &Limits) -> ToolResult {
    run_tool_with(Tool::default(), program, limits)
}

/// Run `tool` on a program, containing any panic: a tool that panics
/// gives the observation `error: internal: <message>` and sets
/// [`ToolResult::internal`]; nothing else stops.
pub fn run_tool_with(tool: Tool, program: &str, limits: &Limits) -> ToolResult {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let result = (tool.0)(program, limits);
        (afm_tasks::observation_text(&result, limits), result.is_ok())
    }));
    match run {
        Ok((text, ok)) => ToolResult {
            text,
            ok,
            internal: None,
        },
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the tool panicked".to_string());
            ToolResult {
                text: format!("error: internal: {msg}"),
                ok: false,
                internal: Some(format!("tool failed internally: {msg}")),
            }
        }
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
