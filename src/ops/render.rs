//! `kiln render` and the stack bundles of `kiln build stack:NAME`: a stack
//! evaluated (with an environment overlay), pinned by the lockfile, and
//! rendered for one target.

use super::{EvalFailure, Target, eval_in};
use crate::config::diagnostic::Diagnostic;
use crate::eval::Evaluator;
use crate::eval::spec::Spec;
use crate::stack::pin::{PinnedStack, pin};
use crate::stack::render::{self, Bundle, RenderError};

/// Why a stack could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    #[error("the stack does not evaluate")]
    Eval(EvalFailure),
    #[error("cannot read lockfile.toml: {0}")]
    Lock(#[from] super::lock::LockError),
    #[error("images are not pinned")]
    Unpinned(Vec<Diagnostic>),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// The stack `name` with the `env` overlay, every image pinned.
pub fn pinned_stack(
    evaluator: &Evaluator,
    name: &str,
    env: Option<&str>,
) -> Result<PinnedStack, RenderFailure> {
    let target = Target {
        kind: crate::config::DocKind::Stack,
        name: name.to_owned(),
        part: None,
    };
    let spec = eval_in(evaluator, &target, env).map_err(RenderFailure::Eval)?;
    let Spec::Stack(stack) = spec else {
        unreachable!("a stack target evaluates to a stack");
    };
    let lock = super::lock::read(&evaluator.repo.root.join("lockfile.toml"))?;
    pin(&stack, &lock).map_err(RenderFailure::Unpinned)
}

/// The bundle of stack `name` for `target`, with the `env` overlay.
pub fn render_stack(
    evaluator: &Evaluator,
    name: &str,
    target: render::Target,
    env: Option<&str>,
) -> Result<Bundle, RenderFailure> {
    let stack = pinned_stack(evaluator, name, env)?;
    Ok(render::render(&stack, target)?)
}
