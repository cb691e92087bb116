//! The Kubernetes target. (Being written: see issue 8.)

use super::{Bundle, RenderError};
use crate::stack::pin::PinnedStack;

/// The kustomize directory of a pinned stack.
pub fn render(_stack: &PinnedStack) -> Result<Bundle, RenderError> {
    Ok(Bundle::default())
}
