//! Reading a lab file's bytes: only a regular file, only up to a size no lab file reaches, and
//! only UTF-8, each refusal saying where the problem is.
//!
//! The path comes from the command line and may name anything: a FIFO would block `read`
//! forever and `/dev/zero` would fill memory, so the file is opened without blocking and its
//! type checked on the open descriptor (no window for a swap between check and read).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::Position;

/// The largest lab file vxlab reads. A 250-guest lab with every field written out is about
/// 60 KiB; 1 MiB leaves room for comments and keeps a hostile file's parse short.
pub const MAX_LAB_BYTES: u64 = 1 << 20;

/// Why a lab file's bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read it: {0}")]
    Io(#[source] io::Error),
    /// Not a regular file.
    #[error("it is {0}, not a regular file; give the path of a lab's YAML file")]
    NotAFile(&'static str),
    /// Larger than [`MAX_LAB_BYTES`].
    #[error("it is larger than {} KiB; a lab file is a few kilobytes", MAX_LAB_BYTES >> 10)]
    TooLarge,
    /// Not UTF-8.
    #[error("byte 0x{byte:02x} is not UTF-8; save the file as UTF-8")]
    NotUtf8 {
        /// The first bad byte.
        byte: u8,
        /// Where it is.
        at: Position,
    },
}

impl ReadError {
    /// Where in the file the problem is, when it is in the content.
    pub fn position(&self) -> Option<Position> {
        match self {
            ReadError::NotUtf8 { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// What kind of file `t` is, in words.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads the lab file at `path` as text.
pub fn lab_text(path: &Path) -> Result<String, ReadError> {
    // O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever. It has no effect
    // on reading a regular file.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotAFile(kind(meta.file_type())));
    }
    // The size may change while reading: read one byte past the limit to know.
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_LAB_BYTES) as usize);
    file.take(MAX_LAB_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_LAB_BYTES {
        return Err(ReadError::TooLarge);
    }
    utf8(bytes)
}

/// `bytes` as text, or where the first byte that is not UTF-8 stands.
pub fn utf8(bytes: Vec<u8>) -> Result<String, ReadError> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        // Everything before the bad byte is valid UTF-8.
        let before = std::str::from_utf8(&bytes[..bad]).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ReadError::NotUtf8 {
            byte: bytes[bad],
            at: Position {
                line: before.matches('\n').count() + 1,
                column: before[line_start..].chars().count() + 1,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bad_byte_is_located_by_line_and_character_column() {
        let err = utf8(b"name: x\ndriver: n\xc3\xa9t\xffns\n".to_vec()).unwrap_err();
        assert_eq!(
            err.position(),
            Some(Position {
                line: 2,
                column: 12
            })
        );
        assert!(err.to_string().contains("0xff"), "{err}");
        assert_eq!(utf8(b"name: \xc3\xa9\n".to_vec()).unwrap(), "name: é\n");
    }

    #[test]
    fn special_files_are_refused_without_blocking_or_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("lab.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            lab_text(&fifo),
            Err(ReadError::NotAFile("a FIFO"))
        ));
        assert!(matches!(
            lab_text(Path::new("/dev/zero")),
            Err(ReadError::NotAFile("a character device"))
        ));
        assert!(matches!(
            lab_text(dir.path()),
            Err(ReadError::NotAFile("a directory"))
        ));
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_LAB_BYTES as usize + 1]).unwrap();
        assert!(matches!(lab_text(&big), Err(ReadError::TooLarge)));
        std::fs::write(&big, vec![b'#'; MAX_LAB_BYTES as usize]).unwrap();
        assert!(lab_text(&big).is_ok());
    }
}
