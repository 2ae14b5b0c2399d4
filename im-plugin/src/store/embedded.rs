//! The embedded store (redb). Being written.
