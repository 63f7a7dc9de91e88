//! The importers, one module per format, in one test binary (one link
//! instead of nine): fixtures written from each framework's own schema,
//! hostile variants, detection, accounting and the native round trip.

#[path = "../common/mod.rs"]
mod common;

mod ag2_sqlite;
mod autogen;
mod crewai;
mod langgraph;
mod magentic;
mod openai_agents;
mod sharegpt;
mod smolagents;
