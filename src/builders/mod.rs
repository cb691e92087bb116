//! Builders: the code that turns one derivation's inputs into its output.

pub mod debian_index;
pub mod fetch;
pub mod lxc;
pub mod overlay;
pub mod seed;
pub mod stack;
pub mod vm;
