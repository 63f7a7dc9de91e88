//! afm-model (work in progress)
pub mod device;
