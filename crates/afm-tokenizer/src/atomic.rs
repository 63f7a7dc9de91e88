//! Crash-safe file writes: every file a later run trusts (checkpoints,
//! shards and their index, stage markers, reports) is written to a
//! temporary file in the same directory, flushed, fsynced, and renamed over
//! the target; the directory is fsynced after the rename. A crash, a
//! SIGKILL or a full disk therefore leaves either the old file or the new
//! one, never a truncated file. A failed write removes its temporary file
//! and returns an error that names the target path.
//!
//! This lives in `afm-tokenizer` only because that is the lowest crate every
//! writer depends on (`afm-data`, `afm-model`, `afm-train`, `afm-bench`,
//! `afm-cli`); it uses nothing but `std`.
//!
//! Tests inject write failures with [`testing::fail_after`] (per thread).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// `err` with `path` in its message (the kind is kept).
pub fn with_path(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A file being written atomically to `path`: write into it, then
/// [`AtomicFile::commit`]. Dropped without commit, the temporary is removed
/// and `path` is untouched.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

fn tmp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    // Unique per process and call: two writers of one path never share a
    // temporary.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(parent(path).join(format!(
        ".{}.tmp-{}-{seq}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl AtomicFile {
    /// Start writing `path` (its directory must exist).
    pub fn create(path: &Path) -> io::Result<Self> {
        let tmp = tmp_path(path)?;
        let file = File::create(&tmp).map_err(|e| with_path(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 16, file)),
        })
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flush, fsync, rename over the target, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let res = (|| {
            let file = self.file.take().expect("AtomicFile committed twice");
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            sync_dir(parent(&self.path))
        })();
        res.map_err(|e| with_path(&self.path, e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("AtomicFile written after commit");
        let n = testing::admit(buf.len()).map_err(|e| with_path(&self.path, e))?;
        file.write(&buf[..n]).map_err(|e| with_path(&self.path, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        let file = self.file.as_mut().expect("AtomicFile flushed after commit");
        file.flush().map_err(|e| with_path(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes.as_ref())?;
    f.commit()
}

/// Write `path` atomically with `body` (a failing body leaves `path` as it was).
pub fn write_with(
    path: &Path,
    body: impl FnOnce(&mut AtomicFile) -> io::Result<()>,
) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    body(&mut f).map_err(|e| {
        if e.to_string().contains(&*path.to_string_lossy()) {
            e
        } else {
            with_path(path, e)
        }
    })?;
    f.commit()
}

/// fsync a directory (makes renames and new entries in it durable). A no-op
/// where directories cannot be opened (non-Unix).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// fsync every regular file under `dir` and every directory, `dir` last:
/// for a directory written by code that does not fsync (libtorch, a
/// library's writer) before it is renamed into place or marked complete.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| with_path(dir, e))? {
        let e = e.map_err(|e| with_path(dir, e))?;
        let p = e.path();
        let t = e.file_type().map_err(|e| with_path(&p, e))?;
        if t.is_dir() {
            sync_tree(&p)?;
        } else if t.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| with_path(&p, e))?;
        }
    }
    sync_dir(dir)
}

/// Write-failure injection for tests: bytes written through [`AtomicFile`]
/// on this thread after the armed budget fail like a full disk.
pub mod testing {
    use std::cell::Cell;
    use std::io;

    thread_local! {
        static BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Disarms the injection when dropped.
    pub struct Armed(());

    impl Drop for Armed {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(None));
        }
    }

    /// From now on (until the guard drops), atomic writes on this thread
    /// fail with "no space left" after `bytes` more bytes in total.
    pub fn fail_after(bytes: u64) -> Armed {
        BUDGET.with(|b| b.set(Some(bytes)));
        Armed(())
    }

    /// How many of `len` bytes may be written now.
    pub(super) fn admit(len: usize) -> io::Result<usize> {
        BUDGET.with(|b| match b.get() {
            None => Ok(len),
            Some(0) if len > 0 => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected fault)",
            )),
            Some(left) => {
                let n = (len as u64).min(left);
                b.set(Some(left - n));
                Ok(n as usize)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let d = std::env::temp_dir()
                .join(format!("afm-atomic-test-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = TempDir::new();
        let p = dir.path().join("a.json");
        write(&p, b"old contents").unwrap();
        // A body that fails half-way leaves the old file and no temporary.
        let e = write_with(&p, |f| {
            f.write_all(b"new, but")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("a.json"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        // An injected full disk after 5 bytes: same, and the error names the path.
        {
            let _g = testing::fail_after(5);
            let e = write(&p, vec![7u8; 100_000]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
        assert!(leftovers(dir.path()).is_empty());
        // Disarmed: the write goes through.
        write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        // A missing directory is an error naming the path.
        let q = dir.path().join("missing/b.json");
        let e = write(&q, b"x").unwrap_err();
        assert!(e.to_string().contains("missing/b.json"), "{e}");
        sync_tree(dir.path()).unwrap();
    }
}
