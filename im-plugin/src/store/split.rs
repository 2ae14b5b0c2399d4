//! Being written (session 2).
