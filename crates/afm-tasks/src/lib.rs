//! afm-tasks (work in progress)
