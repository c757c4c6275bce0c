//! The guest kernel as QEMU loads it: an uncompressed ELF entered directly (PVH).
//!
//! QEMU maps the kernel file and copies each loadable segment's file bytes into guest memory,
//! zero-filling the rest of the segment. It keeps that mapping for the guest's next reset, so
//! every byte it copied stays resident in every guest's process. Debian's kernel carries its
//! `.bss` and scratch space (about 21 MiB) as zeros in the file, because a section with
//! contents follows them in the same segment. [`trim`] declares each segment's trailing zeros
//! as zero fill instead: the guest gets the same memory, and no QEMU process holds the zeros.

use std::os::unix::fs::FileExt;
use std::path::Path;

/// ELF64 header fields and program header layout (the System V ABI's).
const PHOFF_AT: usize = 32;
const PHENTSIZE_AT: usize = 54;
const PHNUM_AT: usize = 56;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
/// Within a program header: type, file offset, size in the file.
const P_TYPE_AT: usize = 0;
const P_OFFSET_AT: usize = 8;
const P_FILESZ_AT: usize = 32;
const P_MEMSZ_AT: usize = 40;

/// Why a kernel file cannot be trimmed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// Not a little-endian 64-bit ELF file.
    #[error("not a little-endian 64-bit ELF kernel")]
    NotElf,
    /// A header or segment lies outside the file.
    #[error("its {0} lies outside the file")]
    Truncated(&'static str),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the program headers are in `elf`: their offset and count, checked against its length.
fn program_headers(elf: &[u8]) -> Result<(usize, usize), KernelError> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(KernelError::NotElf);
    }
    let header = KernelError::Truncated("ELF header");
    let offset = u64_at(elf, PHOFF_AT).ok_or(header.clone())?;
    let size = u16_at(elf, PHENTSIZE_AT).ok_or(header.clone())?;
    let count = u16_at(elf, PHNUM_AT).ok_or(header)?;
    if usize::from(size) != PHDR_SIZE {
        return Err(KernelError::NotElf);
    }
    let offset = usize::try_from(offset).map_err(|_| KernelError::Truncated("program headers"))?;
    let end = offset.checked_add(PHDR_SIZE * usize::from(count));
    match end {
        Some(end) if end <= elf.len() => Ok((offset, usize::from(count))),
        _ => Err(KernelError::Truncated("program headers")),
    }
}

/// Shortens every loadable segment's size in the file to its last non-zero byte, in the
/// program headers of `elf`; the memory size is left alone, so the loader zero-fills what was
/// cut. Returns the bytes no longer loaded from the file. Pure: a trimmed file trims to itself.
pub fn trim_segments(elf: &mut [u8]) -> Result<u64, KernelError> {
    let (table, count) = program_headers(elf)?;
    let mut trimmed = Vec::new();
    for i in 0..count {
        let at = table + i * PHDR_SIZE;
        if u32_at(elf, at + P_TYPE_AT) != Some(PT_LOAD) {
            continue;
        }
        let segment = KernelError::Truncated("loadable segment");
        let (offset, filesz, memsz) = (
            u64_at(elf, at + P_OFFSET_AT).ok_or(segment.clone())?,
            u64_at(elf, at + P_FILESZ_AT).ok_or(segment.clone())?,
            u64_at(elf, at + P_MEMSZ_AT).ok_or(segment.clone())?,
        );
        let start = usize::try_from(offset).map_err(|_| segment.clone())?;
        let len = usize::try_from(filesz.min(memsz)).map_err(|_| segment.clone())?;
        let bytes = start
            .checked_add(len)
            .and_then(|end| elf.get(start..end))
            .ok_or(segment)?;
        let kept = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1) as u64;
        trimmed.push((at + P_FILESZ_AT, filesz - kept, kept));
    }
    // Every header was read before any is written: a refused file is left as it was.
    for &(at, _, kept) in &trimmed {
        elf[at..at + 8].copy_from_slice(&kept.to_le_bytes());
    }
    Ok(trimmed.iter().map(|&(_, saved, _)| saved).sum())
}

/// Trims the kernel file at `path` in place (its program headers only). Returns the bytes no
/// longer loaded from the file.
pub fn trim(path: &Path) -> Result<u64, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut elf = std::fs::read(path).map_err(|e| fail(&e))?;
    let saved = trim_segments(&mut elf).map_err(|e| fail(&e))?;
    let (table, count) = program_headers(&elf).map_err(|e| fail(&e))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| fail(&e))?;
    file.write_all_at(&elf[table..table + count * PHDR_SIZE], table as u64)
        .map_err(|e| fail(&e))?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little ELF64 file whose segments are `(file bytes, memory size)`, each at its own
    /// offset after the headers, with a non-loadable segment last.
    fn elf(segments: &[(&[u8], u64)]) -> Vec<u8> {
        let count = segments.len() + 1;
        let mut out = vec![0u8; 64 + count * PHDR_SIZE];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[PHOFF_AT..PHOFF_AT + 8].copy_from_slice(&64u64.to_le_bytes());
        out[PHENTSIZE_AT..PHENTSIZE_AT + 2].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out[PHNUM_AT..PHNUM_AT + 2].copy_from_slice(&(count as u16).to_le_bytes());
        for (i, (bytes, memsz)) in segments.iter().enumerate() {
            let at = 64 + i * PHDR_SIZE;
            let offset = out.len() as u64;
            out[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[at + P_OFFSET_AT..at + P_OFFSET_AT + 8].copy_from_slice(&offset.to_le_bytes());
            let filesz = (bytes.len() as u64).to_le_bytes();
            out[at + P_FILESZ_AT..at + P_FILESZ_AT + 8].copy_from_slice(&filesz);
            out[at + P_MEMSZ_AT..at + P_MEMSZ_AT + 8].copy_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let note = 64 + segments.len() * PHDR_SIZE;
        out[note..note + 4].copy_from_slice(&4u32.to_le_bytes());
        out[note + P_FILESZ_AT..note + P_FILESZ_AT + 8].copy_from_slice(&99u64.to_le_bytes());
        out
    }

    fn field(elf: &[u8], segment: usize, at: usize) -> u64 {
        u64_at(elf, 64 + segment * PHDR_SIZE + at).unwrap()
    }

    #[test]
    fn trailing_zeros_become_zero_fill_and_content_stays() {
        let mut f = elf(&[
            (b"code\0\0\0\0", 8),
            (b"\0\0data\0\0\0\0\0\0", 64),
            (b"\0\0\0\0", 16),
        ]);
        let before = f.clone();
        assert_eq!(trim_segments(&mut f), Ok(4 + 6 + 4));
        assert_eq!(field(&f, 0, P_FILESZ_AT), 4);
        assert_eq!(field(&f, 1, P_FILESZ_AT), 6, "zeros inside a segment stay");
        assert_eq!(field(&f, 2, P_FILESZ_AT), 0);
        assert_eq!(
            [field(&f, 0, P_MEMSZ_AT), field(&f, 1, P_MEMSZ_AT)],
            [8, 64],
            "the guest gets the same memory"
        );
        assert_eq!(
            field(&f, 3, P_FILESZ_AT),
            99,
            "only loadable segments change"
        );
        let header_end = 64 + 4 * PHDR_SIZE;
        assert_eq!(f[header_end..], before[header_end..], "no content changes");
        let once = f.clone();
        assert_eq!(trim_segments(&mut f), Ok(0));
        assert_eq!(f, once);
    }

    #[test]
    fn what_is_not_a_whole_elf_kernel_is_refused_untouched() {
        assert_eq!(
            trim_segments(&mut b"MZ\x90\0 a bzImage".to_vec()),
            Err(KernelError::NotElf)
        );
        let mut f = elf(&[(b"code\0\0", 6), (b"data", 4)]);
        let cut = f.len() - 2;
        let mut short = f[..cut].to_vec();
        let before = short.clone();
        assert_eq!(
            trim_segments(&mut short),
            Err(KernelError::Truncated("loadable segment"))
        );
        assert_eq!(short, before);
        f.truncate(70);
        assert_eq!(
            trim_segments(&mut f),
            Err(KernelError::Truncated("program headers"))
        );
    }

    #[test]
    fn a_file_is_trimmed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        std::fs::write(&path, elf(&[(b"code\0\0", 6)])).unwrap();
        assert_eq!(trim(&path), Ok(2));
        let f = std::fs::read(&path).unwrap();
        assert_eq!(field(&f, 0, P_FILESZ_AT), 4);
        assert!(trim(&dir.path().join("none")).unwrap_err().contains("none"));
    }
}
