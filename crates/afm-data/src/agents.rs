//! Agent naming: renames/merges and which agents are observation sources.
//!
//! An agents map is a TOML file:
//!
//! ```toml
//! # names containing terminal/tool/observation/function are observations by default
//! observation = ["WebBrowserTool", "Sandbox"]   # more observation agents
//! agent = ["ToolSmith"]                          # never observations, despite the default rule
//!
//! [rename]                                       # applied first; merges spellings
//! VerificationExpert = "Verification_Expert"
//! ```
//!
//! Renames apply first; the observation rule then sees the new name.

use afm_format::{Step, StepKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Renames and observation classification of agents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsMap {
    /// Old name -> new name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Agents whose steps are observations (in addition to the default rule).
    #[serde(default)]
    pub observation: BTreeSet<String>,
    /// Agents that are never observations (overrides the default rule).
    #[serde(default)]
    pub agent: BTreeSet<String>,
}

/// Substrings (case-insensitive) that make a name an observation source by default.
pub const DEFAULT_OBSERVATION_SUBSTRINGS: [&str; 4] =
    ["terminal", "tool", "observation", "function"];

impl AgentsMap {
    /// Parse TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Read a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("agents map {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("agents map {}: {e}", path.display()))
    }

    /// The final name of `name`.
    pub fn rename<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.get(name).map(String::as_str).unwrap_or(name)
    }

    /// True when steps by `name` (already renamed) are observations.
    pub fn is_observation(&self, name: &str) -> bool {
        if self.agent.contains(name) {
            return false;
        }
        if self.observation.contains(name) {
            return true;
        }
        is_default_observation(name)
    }

    /// Rename the step's agent and turn it into an observation when its agent is one.
    pub fn apply(&self, step: &mut Step) {
        let new = self.rename(&step.agent);
        if new != step.agent {
            step.agent = new.to_string();
        }
        if step.kind == StepKind::Agent && self.is_observation(&step.agent) {
            step.kind = StepKind::Observation;
        }
    }
}

/// The default rule: `tool` role, or a name containing terminal, tool,
/// observation or function (case-insensitive).
pub fn is_default_observation(name: &str) -> bool {
    let l = name.to_lowercase();
    DEFAULT_OBSERVATION_SUBSTRINGS.iter().any(|s| l.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_then_classify() {
        let m = AgentsMap::from_toml(
            "observation = [\"Browser\"]\nagent = [\"ToolSmith\"]\n[rename]\nVerificationExpert = \"Verification_Expert\"\nsh = \"Computer_terminal\"\n",
        )
        .unwrap();
        let mut s = Step {
            agent: "VerificationExpert".into(),
            kind: StepKind::Agent,
            text: String::new(),
        };
        m.apply(&mut s);
        assert_eq!(
            (s.agent.as_str(), s.kind),
            ("Verification_Expert", StepKind::Agent)
        );
        let mut s = Step {
            agent: "sh".into(),
            kind: StepKind::Agent,
            text: String::new(),
        };
        m.apply(&mut s);
        assert_eq!(
            (s.agent.as_str(), s.kind),
            ("Computer_terminal", StepKind::Observation)
        );
        assert!(m.is_observation("Browser"));
        assert!(!m.is_observation("ToolSmith"));
        assert!(m.is_observation("my_FUNCTION_runner"));
        assert!(!m.is_observation("Planner"));
        assert!(AgentsMap::from_toml("nonsense = 1").is_err());
    }
}
