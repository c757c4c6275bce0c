//! Reading and writing kernel settings under /proc/sys.

use std::io;
use std::path::PathBuf;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl such as `net.ipv4.neigh.default.gc_thresh3`.
pub fn read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

/// Writes a sysctl.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(path(key), value)
}

/// The neighbour-table thresholds of one address family, smallest first.
pub fn neighbour_keys(ipv6: bool) -> [String; 3] {
    let fam = if ipv6 { "ipv6" } else { "ipv4" };
    [1, 2, 3].map(|n| format!("net.{fam}.neigh.default.gc_thresh{n}"))
}
