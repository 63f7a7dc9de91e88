//! afm-agents (work in progress)
