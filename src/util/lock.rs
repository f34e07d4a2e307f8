//! One writer per folder: a run folder, a `kiln tune` study, a model being fetched into the cache.
//!
//! The lock of `dir` is the file `.<name>.lock` beside it (not inside, so replacing the folder
//! whole under `--overwrite` does not touch it, and a refused run creates no folder). The
//! operating system's advisory file lock (`flock`) on it is what excludes: it is released by the
//! kernel when the holder exits in any way, so a lock left by a killed process can never block
//! the next run. The file's text says who holds it (pid, host, start, what for) for the message
//! the second writer gets. On a normal exit (or an error: [`Lock`]'s `Drop`) the file is removed;
//! a file that is still there while no one holds it was left by a process that died, and the
//! next taker reports it ([`Lock::took_over`]) and takes it over.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock; dropping it releases it and removes its file.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    file: File,
    took_over: Option<String>,
    /// Parent folders this lock created (removed again if still empty when it is released).
    made: Vec<PathBuf>,
}

/// Who holds a lock, as its file says.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Unix seconds.
    pub started: u64,
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = now().saturating_sub(self.started);
        write!(f, "pid {} on host {} ({}, started {ago} s ago)", self.pid, self.host, self.what)
    }
}

impl Holder {
    fn this_process(what: &str) -> Holder {
        Holder { pid: std::process::id(), host: host_name(), started: now(), what: what.to_string() }
    }

    fn to_text(&self) -> String {
        format!("pid {}\nhost {}\nstarted {}\nwhat {}\n", self.pid, self.host, self.started, self.what)
    }

    /// Reads a lock file's text; None when it is empty or not one (a half-written file).
    fn parse(text: &str) -> Option<Holder> {
        let field = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' '))).map(str::to_string)
        };
        Some(Holder {
            pid: field("pid")?.parse().ok()?,
            host: field("host")?,
            started: field("started")?.parse().ok()?,
            what: field("what").unwrap_or_default(),
        })
    }
}

/// The lock file of `dir`: `.<name>.lock` in its parent.
pub fn lock_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "kiln".into());
    parent(dir).join(format!(".{name}.lock"))
}

fn parent(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Lock {
    /// Takes the lock of `dir` for `what` (`kiln train`, ...), or refuses at once naming the
    /// holder; `flag` is the option that named `dir` (for the message).
    pub fn take(dir: &Path, flag: &'static str, what: &str) -> Result<Lock> {
        Lock::acquire(dir, what, |holder| {
            Err(Error::invalid(
                flag,
                format!(
                    "{} is in use by another kiln: {}; one writer per folder (wait for it to finish, \
                     or choose another folder)",
                    dir.display(),
                    holder.map_or("a process that has not written its name yet".into(), |h| h.to_string())
                ),
            ))
        })
    }

    /// Takes the lock of `dir`, waiting while another process holds it; `waiting` is told who,
    /// once, before the wait.
    pub fn wait(dir: &Path, what: &str, waiting: &mut dyn FnMut(Option<&Holder>)) -> Result<Lock> {
        Lock::acquire(dir, what, |holder| {
            waiting(holder);
            Ok(true)
        })
    }

    /// Whether this lock was taken over from a process that died holding it: what its file said.
    pub fn took_over(&self) -> Option<&str> {
        self.took_over.as_deref()
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `busy` decides what to do when another process holds the lock: refuse (an error) or
    /// block until it is free (`Ok(true)`).
    fn acquire(dir: &Path, what: &str, mut busy: impl FnMut(Option<&Holder>) -> Result<bool>) -> Result<Lock> {
        let path = lock_path(dir);
        let made = make_parents(&parent(dir))?;
        let mut told = false;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    if told {
                        file.lock().map_err(|e| Error::io(&path, e))?;
                    } else if busy(holder_once_named(&mut file).as_ref())? {
                        told = true;
                        file.lock().map_err(|e| Error::io(&path, e))?;
                    }
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // The holder before us removes the file before it unlocks: a lock on a file no longer
            // at `path` excludes no one, so open the one that is there now and lock again.
            if !same_file(&file, &path) {
                continue;
            }
            let took_over = read_holder(&mut file).map(|h| h.to_string());
            let me = Holder::this_process(what).to_text();
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
            file.rewind().map_err(|e| Error::io(&path, e))?;
            file.write_all(me.as_bytes()).and_then(|()| file.flush()).map_err(|e| Error::io(&path, e))?;
            return Ok(Lock { path, file, took_over, made });
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove, then unlock (closing the file): whoever waits on the old file sees it gone and
        // retries on a new one.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates `dir` and its missing ancestors, returning those it created (outermost first).
fn make_parents(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing: Vec<PathBuf> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect();
    missing.reverse();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(missing)
}

/// The holder of a lock that is taken: it writes its name just after it locks, so a reader
/// that comes in between waits a moment (up to a second) for the name rather than report none.
fn holder_once_named(file: &mut File) -> Option<Holder> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let holder = read_holder(file);
        if holder.is_some() || std::time::Instant::now() >= deadline {
            return holder;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

fn now() -> u64 {
    std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_secs()
}

/// This machine's name (for the message a writer on another machine sharing the folder gets).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second taker is refused naming the holder's pid and host; after the first is dropped
    /// the lock file is gone and the folder can be taken again. Parent folders the lock made
    /// for itself are removed with it.
    #[test]
    fn a_second_writer_is_refused_naming_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runs").join("a");
        let first = Lock::take(&dir, "--out", "kiln train").unwrap();
        assert!(first.took_over().is_none());
        assert_eq!(first.path(), root.path().join("runs").join(".a.lock"));
        assert!(!dir.exists(), "the lock must not create the folder it guards");
        let e = Lock::take(&dir, "--out", "kiln train").unwrap_err().to_string();
        assert!(e.starts_with("--out: "), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains(&host_name()), "{e}");
        assert!(e.contains("in use by another kiln") && e.contains("kiln train"), "{e}");
        drop(first);
        assert!(!root.path().join("runs").exists(), "the lock's own parent folder was left behind");
        let again = Lock::take(&dir, "--out", "kiln train").unwrap();
        assert!(again.took_over().is_none());
    }

    /// A lock file left by a process that died (its text is there, no one holds the OS lock) is
    /// reported and taken over.
    #[test]
    fn a_stale_lock_is_reported_and_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        let dead = Holder { pid: 999_999_999, host: host_name(), started: now() - 60, what: "kiln train".into() };
        std::fs::write(lock_path(&dir), dead.to_text()).unwrap();
        let lock = Lock::take(&dir, "--out", "kiln train").unwrap();
        let note = lock.took_over().expect("a stale lock reported");
        assert!(note.contains("pid 999999999") && note.contains("started 60 s ago"), "{note}");
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(Holder::parse(&text).unwrap().pid, std::process::id());
        drop(lock);
        assert!(!lock_path(&dir).exists());
    }

    /// Waiting: a second taker blocks until the first lets go, having been told who it waits for.
    #[test]
    fn a_waiter_gets_the_lock_when_the_holder_lets_go() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        let first = Lock::take(&dir, "--model", "fetch").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        let waiter = std::thread::spawn(move || {
            let mut told = None;
            let lock = Lock::wait(&d, "fetch", &mut |h| told = h.map(|h| h.pid)).unwrap();
            tx.send(()).unwrap();
            (told, lock.took_over().map(str::to_string))
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "the waiter did not wait");
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the waiter got the lock");
        let (told, took_over) = waiter.join().unwrap();
        assert_eq!(told, Some(std::process::id()));
        assert!(took_over.is_none(), "a lock released normally is no stale lock: {took_over:?}");
    }
}
