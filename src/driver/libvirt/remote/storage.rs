//! Disks on a remote host, as libvirt storage volumes in vxlab's pool there: the guest image
//! (uploaded once by `vxlab hosts prepare`), and each guest's overlay of it, seed disk and
//! console log. Bytes go to the host through a storage volume upload stream, and the end of a
//! console log comes back through a download stream.

use std::io::Read;

use serde_json::json;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::driver::libvirt::image::Image;
use crate::templates::render;

/// The pool vxlab keeps on every remote host.
pub const POOL: &str = "vxlab";
/// Where that pool keeps its volumes.
pub const POOL_PATH: &str = "/var/lib/libvirt/vxlab";

/// `virStorageVolInfoFlags`: the file's size on disk in `allocation`.
const GET_PHYSICAL: u32 = 1;

/// The pool, when it exists; started when it was defined but inactive.
pub fn pool(conn: &Connect) -> Result<Option<StoragePool>, virt::error::Error> {
    match StoragePool::lookup_by_name(conn, POOL) {
        Ok(p) => {
            if !p.is_active()? {
                p.create(0)?;
            }
            Ok(Some(p))
        }
        Err(e) if e.code() == virt::error::ErrorNumber::NoStoragePool => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pool, defined, built, started and set to start with libvirtd when it was missing.
pub fn ensure_pool(conn: &Connect) -> Result<StoragePool, virt::error::Error> {
    if let Some(p) = pool(conn)? {
        return Ok(p);
    }
    let xml = render("pool.xml", &json!({"name": POOL, "path": POOL_PATH}));
    let p = StoragePool::define_xml(conn, &xml, 0)?;
    p.build(0)?;
    p.create(0)?;
    p.set_autostart(true)?;
    Ok(p)
}

/// Volume `name` of `pool`, when it is there.
pub fn volume(pool: &StoragePool, name: &str) -> Result<Option<StorageVol>, virt::error::Error> {
    match StorageVol::lookup_by_name(pool, name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == virt::error::ErrorNumber::NoStorageVolume => Ok(None),
        Err(e) => Err(e),
    }
}

/// The size of a volume's file on the host, in bytes.
pub fn physical_size(v: &StorageVol) -> Result<u64, virt::error::Error> {
    Ok(v.get_info_flags(GET_PHYSICAL)?.allocation)
}

/// The XML of a new volume.
pub fn volume_xml(name: &str, capacity: u64, format: &str, backing: Option<&str>) -> String {
    render(
        "volume.xml",
        &json!({"name": name, "capacity": capacity, "format": format, "mode": "0600",
            "backing": backing}),
    )
}

/// Creates `name`, a qcow2 overlay of the volume at `base_path`, unless it exists; its path.
pub fn ensure_overlay(
    pool: &StoragePool,
    name: &str,
    base: &StorageVol,
) -> Result<String, virt::error::Error> {
    if let Some(v) = volume(pool, name)? {
        return v.get_path();
    }
    let capacity = base.get_info()?.capacity;
    let xml = volume_xml(name, capacity, "qcow2", Some(&base.get_path()?));
    StorageVol::create_xml(pool, &xml, 0)?.get_path()
}

/// Writes `len` bytes from `data` into a new raw volume `name` (replacing one of that name),
/// through a storage volume upload stream; its path. `progress` hears how many bytes went.
pub fn upload(
    conn: &Connect,
    pool: &StoragePool,
    name: &str,
    len: u64,
    data: &mut dyn Read,
    progress: &mut dyn FnMut(u64),
) -> Result<String, UploadError> {
    if let Some(old) = volume(pool, name)? {
        old.delete(0)?;
    }
    let vol = StorageVol::create_xml(pool, &volume_xml(name, len, "raw", None), 0)?;
    let stream = Stream::new(conn, 0)?;
    vol.upload(&stream, 0, len, 0)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    let result = (|| -> Result<(), UploadError> {
        while sent < len {
            let n = data.read(&mut buf).map_err(UploadError::Read)?;
            if n == 0 {
                return Err(UploadError::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the data ended after {sent} of {len} bytes"),
                )));
            }
            let mut piece = &buf[..n];
            while !piece.is_empty() {
                let w = stream.send(piece)?;
                piece = &piece[w..];
            }
            sent += n as u64;
            progress(sent);
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            stream.finish()?;
            vol.get_path().map_err(UploadError::Libvirt)
        }
        Err(e) => {
            let _ = stream.abort();
            let _ = vol.delete(0);
            Err(e)
        }
    }
}

/// The last `max` bytes of volume `name`, read through a storage volume download stream;
/// `None` when there is no such volume (libvirt re-reads a volume's size when asked for it).
pub fn read_end(
    conn: &Connect,
    pool: &StoragePool,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, virt::error::Error> {
    let Some(vol) = find(pool, name)? else {
        return Ok(None);
    };
    let size = physical_size(&vol)?;
    let len = size.min(max);
    let mut out = Vec::new();
    if len == 0 {
        return Ok(Some(out));
    }
    let stream = Stream::new(conn, 0)?;
    vol.download(&stream, size - len, len, 0)?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match stream.recv(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                let _ = stream.abort();
                return Err(e);
            }
        }
    }
    stream.finish()?;
    Ok(Some(out))
}

/// An upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// libvirt refused a step.
    #[error(transparent)]
    Libvirt(#[from] virt::error::Error),
    /// The data could not be read here.
    #[error("reading the data: {0}")]
    Read(#[source] std::io::Error),
}

/// Volume `name`, also when it is a file libvirt did not create (a console log, which
/// virtlogd writes): that is a volume only once the pool has looked again, so the pool is
/// refreshed (a scan of its directory) only for a name it does not know. A refresh libvirt
/// refuses (one while another volume is being built) leaves the name unknown this time.
pub fn find(pool: &StoragePool, name: &str) -> Result<Option<StorageVol>, virt::error::Error> {
    match volume(pool, name)? {
        Some(v) => Ok(Some(v)),
        None => {
            let _ = pool.refresh(0);
            volume(pool, name)
        }
    }
}

/// Deletes volume `name` (see [`find`]); false when it was not there.
pub fn delete(pool: &StoragePool, name: &str) -> Result<bool, virt::error::Error> {
    match find(pool, name)? {
        Some(v) => {
            v.delete(0)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// One file of the image as a volume on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The file on this machine.
    pub local: std::path::PathBuf,
    /// The volume's name on the hosts.
    pub volume: String,
}

/// The image's name on the hosts: the cache name of a named image (its directory), the file's
/// stem for an image given by path; only `[a-z0-9.-]` (others become `-`).
pub fn image_name(image: &Image) -> String {
    let stem = image
        .disk
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = if stem == "base" {
        image
            .disk
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or(stem)
    } else {
        stem
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The image's three files and their volumes: disk, kernel, initrd.
pub fn image_files(image: &Image) -> [ImageFile; 3] {
    let name = image_name(image);
    [
        (image.disk.clone(), format!("{name}.qcow2")),
        (image.kernel.clone(), format!("{name}.vmlinuz")),
        (image.initrd.clone(), format!("{name}.initrd.img")),
    ]
    .map(|(local, volume)| ImageFile { local, volume })
}

/// The volume names of guest `instance`'s overlay, seed disk and console log.
pub fn guest_volumes(instance: &str) -> [String; 3] {
    [
        format!("{instance}.qcow2"),
        format!("{instance}.seed.img"),
        format!("{instance}.console.log"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn volume_xml_names_the_backing_store_and_survives_hostile_values() {
        let xml = volume_xml("a'b<c>.qcow2", 2 << 30, "qcow2", Some("/p/&x.qcow2"));
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let text = |tag: &str| {
            doc.descendants()
                .filter(|n| n.has_tag_name(tag))
                .filter_map(|n| n.text())
                .collect::<Vec<_>>()
        };
        assert_eq!(text("name"), ["a'b<c>.qcow2"]);
        assert_eq!(text("capacity"), [(2u64 << 30).to_string().as_str()]);
        assert_eq!(text("path"), ["/p/&x.qcow2"]);
        assert_eq!(text("mode"), ["0600"]);
        let raw = volume_xml("s.img", 4096, "raw", None);
        assert!(!raw.contains("backingStore"));
    }

    #[test]
    fn the_image_keeps_its_name_on_every_host() {
        let named = Image {
            disk: PathBuf::from("/var/cache/vxlab/images/debian-12/base.qcow2"),
            kernel: PathBuf::from("/var/cache/vxlab/images/debian-12/vmlinuz"),
            initrd: PathBuf::from("/var/cache/vxlab/images/debian-12/initrd.img"),
            seeding: crate::driver::libvirt::seed::Seeding::Cmdline,
        };
        let files = image_files(&named);
        assert_eq!(
            files.map(|f| f.volume),
            [
                "debian-12.qcow2",
                "debian-12.vmlinuz",
                "debian-12.initrd.img"
            ]
        );
        let mut theirs = named.clone();
        theirs.disk = PathBuf::from("/home/u/My Image.qcow2");
        assert_eq!(image_name(&theirs), "-y--mage");
        assert_eq!(
            guest_volumes("vxlab-w-1.vm-a")[2],
            "vxlab-w-1.vm-a.console.log"
        );
    }
}
