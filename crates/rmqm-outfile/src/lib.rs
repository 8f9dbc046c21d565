//! Output files that appear whole or not at all.
//!
//! An [`OutFile`] writes a regular file (or a path that does not exist yet) to a temporary file
//! beside it and renames that onto the path when [`OutFile::commit`] is called; dropped without a
//! commit (an error, a panic), it removes the temporary file and leaves the path as it was.
//!
//! A path that already exists and is not a regular file or a directory (a character device such as
//! `/dev/null`, a FIFO such as bash's `>(...)`, a socket) is written in place instead: renaming onto
//! it would replace the device or pipe with an ordinary file, which, run as root, turns `/dev/null`
//! into a file that every later `> /dev/null` writes to and every reader of `/dev/null` reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How an output path is written: whole by a rename, or in place for special files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// A temporary file beside the path, renamed onto it on commit (regular files, new paths).
    Replace,
    /// The path itself, opened for writing (devices, FIFOs, sockets: never replaced).
    InPlace,
}

impl WriteMode {
    /// The mode for `path`: in place when it exists and is neither a regular file nor a directory
    /// (symlinks are followed, so a link to `/dev/null` counts as `/dev/null`).
    pub fn for_path(path: &Path) -> WriteMode {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() && !meta.is_dir() => WriteMode::InPlace,
            _ => WriteMode::Replace,
        }
    }
}

/// `path` with symlinks resolved when it is one and its target exists; otherwise `path`.
fn resolve_link(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

enum Destination {
    Temporary(tempfile::NamedTempFile),
    InPlace(File),
}

/// An output file: write to it, then [`commit`](OutFile::commit); dropped uncommitted, it leaves
/// nothing at the target path (unless the path is a special file written in place).
pub struct OutFile {
    destination: Destination,
    target: PathBuf,
}

impl OutFile {
    /// Opens an output for `target`, creating its parent directories for a new regular file. A
    /// symlink at `target` is followed: the file it points to is replaced and the link stays
    /// (`-o /dev/stdout` redirected to a file replaces that file, not `/dev/stdout`).
    pub fn create(target: &Path) -> io::Result<OutFile> {
        let target = &resolve_link(target);
        let destination = match WriteMode::for_path(target) {
            WriteMode::InPlace => {
                Destination::InPlace(OpenOptions::new().write(true).open(target)?)
            }
            WriteMode::Replace => {
                let dir = match target.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                std::fs::create_dir_all(&dir)?;
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".tmp")
                    .tempfile_in(&dir)?;
                Destination::Temporary(tmp)
            }
        };
        Ok(OutFile {
            destination,
            target: target.to_path_buf(),
        })
    }

    /// How this output is written.
    pub fn mode(&self) -> WriteMode {
        match self.destination {
            Destination::Temporary(_) => WriteMode::Replace,
            Destination::InPlace(_) => WriteMode::InPlace,
        }
    }

    /// The path the output goes to (a symlink at the given path resolved).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Completes the output: a temporary file is synced, made an ordinary readable file (0644 on
    /// Unix, where temporary files are private) and renamed onto the target; a special file is
    /// flushed.
    pub fn commit(self) -> io::Result<()> {
        match self.destination {
            Destination::Temporary(mut tmp) => {
                tmp.flush()?;
                tmp.as_file().sync_data()?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    tmp.as_file()
                        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
                }
                tmp.persist(&self.target).map_err(|e| e.error)?;
                Ok(())
            }
            Destination::InPlace(mut file) => file.flush(),
        }
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.destination {
            Destination::Temporary(tmp) => tmp.write(buf),
            Destination::InPlace(file) => file.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.destination {
            Destination::Temporary(tmp) => tmp.write_all(buf),
            Destination::InPlace(file) => file.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.destination {
            Destination::Temporary(tmp) => tmp.flush(),
            Destination::InPlace(file) => file.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_path_appears_only_on_commit_and_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.bin");
        let mut out = OutFile::create(&target).unwrap();
        assert_eq!(out.mode(), WriteMode::Replace);
        out.write_all(b"whole").unwrap();
        assert!(!target.exists(), "visible before commit");
        out.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn an_uncommitted_output_leaves_an_existing_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let mut out = OutFile::create(&target).unwrap();
        out.write_all(b"partial").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_stays_and_the_file_it_points_to_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere/real.bin");
        std::fs::create_dir_all(real.parent().unwrap()).unwrap();
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut out = OutFile::create(&link).unwrap();
        out.write_all(b"new").unwrap();
        out.commit().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn dev_null_is_written_in_place() {
        // Only reads metadata: a regression here must not be able to replace /dev/null.
        if std::fs::metadata("/dev/null").is_ok() {
            assert_eq!(
                WriteMode::for_path(Path::new("/dev/null")),
                WriteMode::InPlace
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_stays_a_fifo_and_its_reader_gets_the_bytes() {
        use std::os::unix::fs::FileTypeExt;
        use std::sync::mpsc;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
        let (sent, received) = mpsc::channel();
        let reader_path = fifo.clone();
        std::thread::spawn(move || {
            let bytes = std::fs::read(&reader_path).unwrap();
            sent.send(bytes).unwrap();
        });
        let mut out = OutFile::create(&fifo).unwrap();
        assert_eq!(out.mode(), WriteMode::InPlace);
        out.write_all(b"through the pipe").unwrap();
        out.commit().unwrap();
        let bytes = received
            .recv_timeout(Duration::from_secs(20))
            .expect("the FIFO's reader got nothing: the FIFO was replaced");
        assert_eq!(bytes, b"through the pipe");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "the FIFO was replaced by {kind:?}");
    }
}
