//! kiln's output folders (a run, an export, an evaluation report): each carries a marker file,
//! `.kiln`, saying what wrote it, so `--overwrite` replaces only folders kiln made and refuses any
//! other (a user's folder given to `--out` by mistake is never emptied). A replaced folder goes
//! whole: the new one is made beside it and renamed into place, then the old one is removed, so
//! no file of the old folder (kiln's or one a user put there) survives mixed into the new.

use std::path::{Path, PathBuf};

use super::write_atomic;
use crate::error::{Error, Result};

/// The marker file's name.
pub const MARKER: &str = ".kiln";

/// Marks `dir` as written by kiln's `what` (`kiln train run`, `kiln export`).
pub fn mark(dir: &Path, what: &str) -> Result<()> {
    let text =
        format!("{what}\nwritten by kiln {}; `--overwrite` may replace this folder whole\n", env!("CARGO_PKG_VERSION"));
    write_atomic(&dir.join(MARKER), text.as_bytes())
}

/// Whether `dir` carries kiln's marker.
pub fn is_kiln_folder(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Refuses to replace an existing output (a file, or a folder with anything in it) unless the
/// user passed `--overwrite`: nothing the user had is lost by accident. With `--overwrite` a
/// folder must carry kiln's marker: kiln replaces only what it wrote.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    let occupied = match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => path.exists(),
    };
    if occupied && !overwrite {
        return Err(Error::invalid(
            "--out",
            format!("{} already exists; pass --overwrite to replace it", path.display()),
        ));
    }
    if occupied && path.is_dir() && !is_kiln_folder(path) {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} is not a kiln run or export folder (no {MARKER} marker in it), and --overwrite \
                 replaces only what kiln wrote; remove it yourself, or choose another folder",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Makes `dir` a new, empty, marked folder for `what`. A kiln folder already there (one
/// [`check_output`] let through under `--overwrite`) is replaced whole: renamed aside, the new
/// one made, the old one removed. Anything else there is refused as [`check_output`] does.
pub fn create_fresh(dir: &Path, what: &str) -> Result<()> {
    check_output(dir, true)?;
    let old = dir.exists().then(|| aside(dir, "replaced"));
    if let Some(old) = &old {
        std::fs::rename(dir, old).map_err(|e| Error::io(dir, e))?;
    }
    let made = std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)).and_then(|()| mark(dir, what));
    if let Some(old) = old {
        if made.is_err() {
            // Put the old folder back rather than lose it to a folder that could not be made.
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::rename(&old, dir);
        } else {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    made
}

/// Fills the folder `tmp` with `write`, then renames it to `dir` (replacing one there): a reader
/// sees a whole folder (a checkpoint, an export) or none. When writing fails (a full disk) `tmp`
/// is removed before the error is returned, so a failed write leaves nothing behind.
pub fn write_folder_whole(tmp: &Path, dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let filled = std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e)).and_then(|()| write(tmp));
    let moved = filled.and_then(|()| {
        // The old folder is moved aside, not deleted, until the new one is in its place.
        let old = dir.exists().then(|| aside(dir, "replaced"));
        if let Some(old) = &old {
            std::fs::rename(dir, old).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
        if let Some(old) = &old {
            std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
        Ok(())
    });
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    moved
}

/// A hidden name beside `dir` for it while it is being replaced.
fn aside(dir: &Path, why: &str) -> PathBuf {
    let name = dir.file_name().map_or("out".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.{why}-{}", std::process::id()))
}

/// Which folder `dir` is (device and inode), to tell a folder this process made from one that was
/// there before it started; None when there is none.
pub fn identity(dir: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(dir).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        // Without inodes every folder looks the same: one that existed before is never taken
        // for this run's own.
        let _ = meta;
        Some((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails halfway (here the second file, as a full disk would) removes its
    /// temporary folder and leaves no output; one that succeeds leaves only the output.
    #[test]
    fn a_failed_folder_write_removes_its_temp_folder() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, dir) = (root.path().join(".tmp-step-0000003-1"), root.path().join("step-0000003"));
        let err = write_folder_whole(&tmp, &dir, |t| {
            std::fs::write(t.join("state.safetensors"), b"half").unwrap();
            Err(Error::io(t.join("state.json"), std::io::Error::other("no space left on device")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(!tmp.exists() && !dir.exists(), "a failed write left {:?}", std::fs::read_dir(root.path()).unwrap());
        write_folder_whole(&tmp, &dir, |t| std::fs::write(t.join("state.json"), b"{}").map_err(|e| Error::io(t, e)))
            .unwrap();
        assert!(dir.join("state.json").is_file() && !tmp.exists());
        // Written again: the old folder's files go with it, and nothing is left aside.
        std::fs::write(dir.join("user.txt"), b"mine").unwrap();
        write_folder_whole(&tmp, &dir, |t| std::fs::write(t.join("new.json"), b"{}").map_err(|e| Error::io(t, e)))
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("step-0000003")]);
        assert!(dir.join("new.json").is_file() && !dir.join("state.json").exists() && !dir.join("user.txt").exists());
    }

    /// `--overwrite` on a folder kiln did not mark is refused naming it; a marked one is replaced
    /// whole (a file added to it goes too) and the new one is marked.
    #[test]
    fn overwrite_replaces_only_marked_folders_and_replaces_them_whole() {
        let root = tempfile::tempdir().unwrap();
        let users = root.path().join("mine");
        std::fs::create_dir_all(&users).unwrap();
        std::fs::write(users.join("thesis.tex"), b"precious").unwrap();
        let e = check_output(&users, false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--overwrite"), "{e}");
        let e = check_output(&users, true).unwrap_err().to_string();
        assert!(e.contains("not a kiln run or export folder") && e.contains("remove it yourself"), "{e}");
        let e = create_fresh(&users, "kiln train run").unwrap_err().to_string();
        assert!(e.contains("mine") && e.contains(MARKER), "{e}");
        assert_eq!(std::fs::read(users.join("thesis.tex")).unwrap(), b"precious");

        let run = root.path().join("run");
        create_fresh(&run, "kiln train run").unwrap();
        assert!(is_kiln_folder(&run));
        assert!(std::fs::read_to_string(run.join(MARKER)).unwrap().starts_with("kiln train run\n"));
        std::fs::write(run.join("metrics.jsonl"), b"old").unwrap();
        std::fs::write(run.join("notes.txt"), b"a user's note").unwrap();
        check_output(&run, true).unwrap();
        let before = identity(&run);
        create_fresh(&run, "kiln train run").unwrap();
        assert_ne!(identity(&run), before, "a new folder, not the old one emptied");
        let mut names: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [std::ffi::OsString::from(MARKER)]);
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "nothing left aside: {left:?}");
        // An empty folder (made by the user for the run) is simply used.
        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        create_fresh(&empty, "kiln export").unwrap();
        assert!(is_kiln_folder(&empty));
    }
}
