//! The `stack-bundle` builder: a pinned stack rendered for one target,
//! written as a directory of text files (0644, directories 0755).
//!
//! The renderer is pure ([`crate::stack::render`]); this only writes its
//! files, so the store path's bytes are exactly what `kiln render` prints
//! and copies out.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::stack::PinnedStack;
use crate::stack::render::{self, Bundle, RenderError, Target};

/// The builder's name in a derivation.
pub const BUILDER: &str = "stack-bundle";

#[derive(Debug, thiserror::Error)]
pub enum StackBuildError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("the renderer produced an unsafe path `{0}`")]
    UnsafePath(String),
}

/// Render `stack` for `target` into the new directory `out`.
pub fn build(stack: &PinnedStack, target: Target, out: &Path) -> Result<(), StackBuildError> {
    let bundle = render::render(stack, target)?;
    write(&bundle, out)
}

/// Write `bundle` into `out` (created; its parent must exist).
pub fn write(bundle: &Bundle, out: &Path) -> Result<(), StackBuildError> {
    let fail = |path: &Path, source: io::Error| StackBuildError::Write {
        path: path.display().to_string(),
        source,
    };
    mkdir(out).map_err(|e| fail(out, e))?;
    for (relative, text) in &bundle.files {
        if !is_safe(relative) {
            return Err(StackBuildError::UnsafePath(relative.clone()));
        }
        let path = out.join(relative);
        if let Some(parent) = path.parent() {
            let mut dir = out.to_path_buf();
            for part in parent.strip_prefix(out).unwrap_or(parent).components() {
                dir.push(part);
                if !dir.is_dir() {
                    mkdir(&dir).map_err(|e| fail(&dir, e))?;
                }
            }
        }
        fs::write(&path, text).map_err(|e| fail(&path, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(|e| fail(&path, e))?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// A relative path of normal components only.
fn is_safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_written() {
        assert!(is_safe("compose.yaml"));
        assert!(is_safe("prometheus/targets.json"));
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/"] {
            assert!(!is_safe(bad), "{bad}");
        }
    }

    #[test]
    fn writes_files_and_directories_with_fixed_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut bundle = Bundle::default();
        bundle.add("a/b/c.yaml", "x: 1");
        bundle.add("top.txt", "hi\n");
        write(&bundle, &out).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("a/b/c.yaml")).unwrap(),
            "x: 1\n"
        );
        let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("a/b/c.yaml"), 0o644);
        assert_eq!(mode("a/b"), 0o755);
        let mut evil = Bundle::default();
        evil.add("../escape", "no");
        assert!(matches!(
            write(&evil, &dir.path().join("out2")),
            Err(StackBuildError::UnsafePath(_))
        ));
    }
}
