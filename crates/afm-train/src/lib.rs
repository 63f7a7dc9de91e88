//! afm-train (work in progress)
