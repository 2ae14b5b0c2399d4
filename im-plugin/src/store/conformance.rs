//! The store conformance suite. Being written.
