//! SHA-256 of image files, here and on a class's hosts, remembered by each file's size and
//! modification time, as `make` and `rsync` judge a file unchanged. Hashing a 1 GB disk takes
//! seconds here and on every host; `up --hosts` compares the image on each host by checksum
//! and, once a file was hashed, pays that only when the file changed.
//!
//! The record is one JSON file in the image cache (`checksums.json`), written through a
//! temporary file and renamed; keys name the file and where it is (`local /path`, or
//! `URI /path` for a volume on a host). It is only a shortcut: a record that cannot be read
//! or written costs a hash, never a wrong answer about a file whose size or time changed.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a file's checksum is remembered by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, as the system gave it (seconds and nanoseconds).
    pub mtime: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    stamp: FileStamp,
    sha256: String,
}

/// The record of checksums in `file`.
pub struct Checksums {
    file: PathBuf,
}

/// One process's threads (a class's hosts are surveyed at once) take turns at the record.
static RECORD: Mutex<()> = Mutex::new(());

impl Checksums {
    /// The record in the image cache.
    pub fn in_image_cache() -> Checksums {
        Checksums::at(super::image::cache_dir().join("checksums.json"))
    }

    /// The record in `file`.
    pub fn at(file: PathBuf) -> Checksums {
        Checksums { file }
    }

    fn read(&self) -> BTreeMap<String, Entry> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The checksum remembered for `key` if the file still has `stamp`.
    pub fn remembered(&self, key: &str, stamp: &FileStamp) -> Option<String> {
        let _turn = RECORD.lock().unwrap_or_else(|p| p.into_inner());
        self.read()
            .remove(key)
            .filter(|e| e.stamp == *stamp)
            .map(|e| e.sha256)
    }

    /// Remembers `sha256` for `key` with `stamp`; a record that cannot be written is left.
    pub fn remember(&self, key: &str, stamp: &FileStamp, sha256: &str) {
        let _turn = RECORD.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.read();
        all.insert(
            key.to_string(),
            Entry {
                stamp: stamp.clone(),
                sha256: sha256.to_string(),
            },
        );
        let Ok(text) = serde_json::to_vec_pretty(&all) else {
            return;
        };
        let tmp = self
            .file
            .with_extension(format!("json.{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The SHA-256 of `path` on this machine, hashed only when it changed since last time.
    pub fn local(&self, path: &Path) -> io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let stamp = local_stamp(&meta);
        let key = format!("local {}", path.display());
        if let Some(sum) = self.remembered(&key, &stamp) {
            return Ok(sum);
        }
        let sum = sha256_of(path)?;
        self.remember(&key, &stamp, &sum);
        Ok(sum)
    }
}

fn local_stamp(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp {
        size: meta.len(),
        mtime: format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
    }
}

/// SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256_of(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A volume's modification time from its libvirt XML (`<timestamps><mtime>`), if given.
pub fn volume_mtime(xml: &str) -> Option<String> {
    let start = xml.find("<mtime>")? + "<mtime>".len();
    let len = xml[start..].find("</mtime>")?;
    Some(xml[start..start + len].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_hashed_again_only_when_its_size_or_time_changed() {
        let dir = tempfile::tempdir().unwrap();
        let record = Checksums::at(dir.path().join("checksums.json"));
        let f = dir.path().join("disk");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(record.local(&f).unwrap(), abc);
        // Remembered: a forged record for the same stamp is believed...
        let stamp = local_stamp(&std::fs::metadata(&f).unwrap());
        let key = format!("local {}", f.display());
        record.remember(&key, &stamp, "remembered");
        assert_eq!(record.local(&f).unwrap(), "remembered");
        // ... until the file changes: then it is hashed again.
        std::fs::write(&f, b"abcd").unwrap();
        assert_eq!(
            record.local(&f).unwrap(),
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
        let other = FileStamp {
            size: 4,
            mtime: "1.000000000".into(),
        };
        assert_eq!(record.remembered(&key, &other), None);
    }

    #[test]
    fn an_unreadable_record_only_costs_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checksums.json");
        std::fs::write(&file, b"{ not json").unwrap();
        let f = dir.path().join("disk");
        std::fs::write(&f, b"abc").unwrap();
        assert!(Checksums::at(file)
            .local(&f)
            .unwrap()
            .starts_with("ba7816bf"));
    }

    #[test]
    fn the_volume_time_is_read_from_its_xml() {
        let xml = "<volume><target><timestamps><atime>1.5</atime>\
                   <mtime>1795767313.034321055</mtime></timestamps></target></volume>";
        assert_eq!(volume_mtime(xml).as_deref(), Some("1795767313.034321055"));
        assert_eq!(volume_mtime("<volume/>"), None);
    }
}
