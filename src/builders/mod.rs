//! Builders: the code that turns one derivation's inputs into its output.

pub mod overlay;
