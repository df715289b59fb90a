//! Reading files that must stay inside a folder (a migration source's root), whatever
//! symlinks the folder holds and however they change while pgplane reads.
//!
//! **How:** a file is opened first (symlinks followed, non-blocking so a FIFO cannot stall
//! the open), then the path of *the opened file* is asked from the kernel
//! (`/proc/self/fd/N`, which names the inode the descriptor holds, with every symlink
//! resolved) and must lie inside the root; only then is that same descriptor read. There is
//! no window between the check and the read: a symlink swapped in before the open is
//! followed and then refused, one swapped in after it does not change what was opened. A
//! folder is opened the same way, checked, and listed through its descriptor
//! (`/proc/self/fd/N/`), so its entries are those of the checked folder. Only regular files
//! are read. Without `/proc` nothing can be checked, and nothing is read.
//!
//! Hard links are not symlinks: a hard link inside the root is a file of the root (Linux's
//! `fs.protected_hardlinks`, on by default, keeps others from linking files they cannot
//! write).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the descriptor's file really is.
fn real_path(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot tell where an opened file lies ({e}); pgplane needs /proc"))
    })
}

fn outside(path: &Path, real: &Path, root: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} leads to {}, outside {} (a symlink?); files are read only from inside that folder",
            path.display(),
            real.display(),
            root.display()
        ),
    )
}

/// Opens `path`; messages name `shown` (entries of a [`Dir`] are reached through
/// `/proc/self/fd/N/`, which means nothing to people).
fn open(path: &Path, shown: &Path, root: &Path, dir: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    let flags = if dir { libc::O_DIRECTORY } else { libc::O_NONBLOCK };
    let file = opts
        .custom_flags(flags)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", shown.display())))?;
    let real = real_path(&file)?;
    if !real.starts_with(root) {
        return Err(outside(shown, &real, root));
    }
    let meta = file.metadata()?;
    if !dir && !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", shown.display())));
    }
    Ok(file)
}

/// Opens a regular file for reading, refusing it unless it lies inside `root` (a canonical
/// folder) with every symlink followed.
pub fn open_file(path: &Path, root: &Path) -> io::Result<File> {
    open(path, path, root, false)
}

/// Reads a file inside `root` (see [`open_file`]) as UTF-8 text.
pub fn read_to_string(path: &Path, root: &Path) -> io::Result<String> {
    let mut text = String::new();
    open_file(path, root)?.read_to_string(&mut text)?;
    Ok(text)
}

/// A folder inside a root, opened and checked; its entries are read through the
/// descriptor, so they are those of the folder that was checked.
pub struct Dir {
    file: File,
}

impl Dir {
    /// Opens `path`, refusing it unless it lies inside `root` (a canonical folder).
    pub fn open(path: &Path, root: &Path) -> io::Result<Dir> {
        Ok(Dir { file: open(path, path, root, true)? })
    }

    /// The entries, each with a path that reaches it through this folder's descriptor (for
    /// [`open_file`] and [`Dir::open`]; show people the folder's own path instead).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let base = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        let mut out = Vec::new();
        for e in std::fs::read_dir(&base)? {
            let e = e?;
            let folder = e.file_type()?.is_dir();
            out.push(Entry { name: e.file_name().to_string_lossy().into_owned(), path: e.path(), folder });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

pub struct Entry {
    pub name: String,
    /// Reaches the entry through the folder's descriptor, valid while the [`Dir`] lives.
    pub path: PathBuf,
    /// A folder itself (not a symlink to one).
    pub folder: bool,
}

impl Entry {
    /// Whether it is a folder or a symlink to one.
    pub fn is_dir(&self) -> bool {
        self.path.is_dir()
    }

    /// Reads it as text if it is a regular file inside `root`; messages name `shown`.
    pub fn read_to_string(&self, shown: &Path, root: &Path) -> io::Result<String> {
        let mut text = String::new();
        open(&self.path, shown, root, false)?.read_to_string(&mut text)?;
        Ok(text)
    }

    /// Opens it as a folder inside `root`; messages name `shown`.
    pub fn open_dir(&self, shown: &Path, root: &Path) -> io::Result<Dir> {
        Ok(Dir { file: open(&self.path, shown, root, true)? })
    }
}

/// `path` with symlinks followed, refused unless inside `root`: for deciding what a
/// source is (folder or file) and for messages. Reads go through [`open_file`] and
/// [`Dir::open`], which check again on what they open.
pub fn resolve(path: &Path, root: &Path) -> io::Result<PathBuf> {
    let real = path.canonicalize()?;
    if !real.starts_with(root) {
        return Err(outside(path, &real, root));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_root_are_refused_on_the_opened_file() {
        let base = std::env::temp_dir().join(format!("pgplane-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret"), "secret").unwrap();
        std::fs::write(root.join("sub/ok.sql"), "select 1").unwrap();
        symlink(base.join("outside/secret"), root.join("file-link")).unwrap();
        symlink(base.join("outside"), root.join("dir-link")).unwrap();
        symlink("sub/ok.sql", root.join("inner-link")).unwrap();
        let root = root.canonicalize().unwrap();

        assert_eq!(read_to_string(&root.join("sub/ok.sql"), &root).unwrap(), "select 1");
        assert_eq!(read_to_string(&root.join("inner-link"), &root).unwrap(), "select 1");
        for bad in ["file-link", "dir-link/secret", "sub/../../outside/secret"] {
            let e = read_to_string(&root.join(bad), &root).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{bad}: {e}");
            assert!(e.to_string().contains("outside"), "{e}");
        }
        assert!(Dir::open(&root.join("dir-link"), &root).is_err());
        let dir = Dir::open(&root, &root).unwrap();
        let names: Vec<String> = dir.entries().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["dir-link", "file-link", "inner-link", "sub"]);
        let sub = dir.entries().unwrap().into_iter().find(|e| e.name == "sub").unwrap();
        assert!(sub.is_dir());
        let inner = sub.open_dir(Path::new("sub"), &root).unwrap();
        let ok = inner.entries().unwrap().pop().unwrap();
        assert_eq!(ok.read_to_string(Path::new("sub/ok.sql"), &root).unwrap(), "select 1");
        let link = dir.entries().unwrap().into_iter().find(|e| e.name == "file-link").unwrap();
        let e = link.read_to_string(Path::new("shown/file-link"), &root).unwrap_err();
        assert!(e.to_string().starts_with("shown/file-link leads to"), "{e}");
        // A FIFO neither blocks the open nor is read.
        let fifo = root.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read_to_string(&fifo, &root).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
