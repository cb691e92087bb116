//! File-system helpers for anything that must survive a crash.
//!
//! Every record kiln writes (validity records, derivations, lockfile,
//! generation records) goes through [`write_atomic`]: a temp file in the
//! same directory, fsync, rename over the target, fsync the directory. A
//! reader sees the old file or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(directory)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_directory(directory)
}

/// fsync a directory, so a rename or creation inside it is durable.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

/// fsync every file and directory under `root` (an output about to be
/// registered), children before parents.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(root)?;
    if metadata.is_dir() {
        for entry in fs::read_dir(root)? {
            sync_tree(&entry?.path())?;
        }
        File::open(root)?.sync_all()
    } else if metadata.is_file() {
        File::open(root)?.sync_all()
    } else {
        Ok(())
    }
}

/// Make a tree read-only (files keep their execute bits).
pub fn make_read_only(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = fs::symlink_metadata(root)?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    if metadata.is_dir() {
        for entry in fs::read_dir(root)? {
            make_read_only(&entry?.path())?;
        }
    }
    let mode = metadata.permissions().mode() & 0o555;
    fs::set_permissions(root, fs::Permissions::from_mode(mode))
}

/// Remove a tree even if it is read-only (store outputs are).
pub fn remove_tree(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if metadata.is_dir() {
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(root)? {
            remove_tree(&entry?.path())?;
        }
        fs::remove_dir(root)
    } else {
        fs::remove_file(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_read_only_trees_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("record.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        make_read_only(&tree).unwrap();
        assert!(
            fs::write(tree.join("a/b/g"), b"y").is_err() || rustix::process::geteuid().is_root()
        );
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        // Only the record is left: no temp files behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
