//! mqim's IM domain.
#![forbid(unsafe_code)]

pub mod store;
