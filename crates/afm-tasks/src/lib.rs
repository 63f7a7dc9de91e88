//! afm-tasks: verifiable tasks, the tool (a safe, bounded expression
//! language interpreter), and scripted reference agents whose trajectories
//! are afm's default training data.
//!
//! - [`lang`]: the tool. [`run_program`] parses and evaluates one program
//!   under [`Limits`] (fuel, value size, nesting depth, source length);
//!   [`observation_text`] renders the result as the tool observation.
//! - [`Task`], the families/levels catalogue, the deterministic
//!   generator ([`generate`]), the fixed held-out split ([`Task::split`]),
//!   [`verify`], and JSONL task files ([`load_tasks`], [`save_tasks`]).
//! - scripted Planner, Coder, Reviewer ([`solve`]) with
//!   configurable mistakes ([`AgentConfig`]), their native trajectories
//!   ([`Trajectory`]: `afm_format::NativeTrajectory` with [`TrajMeta`]),
//!   [`extract_answer`], role instructions, the agent order, and the
//!   augmentation hooks [`perturb_and_solve`] and [`resolve_record`].
//!
//! Randomness and hashing are `afm_format`'s `SplitMix64` and `fnv1a`
//! (the committed dataset depends on their exact streams).
//!
//! ```
//! use afm_tasks::{extract_answer, generate, solve, verify, AgentConfig, Limits};
//! assert_eq!(afm_tasks::run_to_observation("sum([3, 1, 4])", &Limits::default()), "8");
//! let (train, _test) = generate(1, 5, 0).unwrap();
//! let tr = solve(&train[0], &AgentConfig::default()).unwrap();
//! let answer = extract_answer(tr.trajectory.last().unwrap().text()).unwrap();
//! assert!(verify(&train[0], &answer) && tr.success);
//! ```
//!
//! No tch dependency: this crate sits upstream of data, model and agents.
//! See the crate README for the language reference.

mod agents;
pub mod lang;
mod tasks;

pub use agents::{
    default_dataset_config, extract_answer, load_trajectories, perturb_and_solve, resolve_record,
    role_instruction, save_trajectories, solve, source_task, AgentConfig, Mistake, TrajMeta,
    Trajectory, Turn, AGENT_ORDER, ANSWER_MARKER, CODER, DEFAULT_DATASET_SEED, INTERPRETER,
    LM_AGENTS, PLANNER, REVIEWER, REVISE_MARKER, SYNTAX_SLIP_SHARE,
};
pub use lang::{observation_text, run_program, run_to_observation, Limits, ToolError, Value};
pub use tasks::{
    generate, load_tasks, parse_tasks, sample_train, save_tasks, solution, verify, Solution, Split,
    Task,
};
