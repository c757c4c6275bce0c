//! ICMP echo from inside a network namespace, without a `ping` process per pair.
//!
//! A full mesh of 50 namespace guests is 2450 pings; one `ping` process each costs seconds of
//! fork and exec. Instead one thread enters the guest's namespace, opens a raw ICMP socket
//! there (a socket stays in the namespace it was created in), sends one echo request per target
//! and collects the replies: the same packets `ping -c 1 -W 1` sends, in milliseconds.

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Requests a pinger has on the wire at once. The first echo to each peer is preceded by an
/// ARP request flooded to every VTEP: a 100-guest mesh sending all 9900 at once overflows the
/// VTEPs' sockets and loses pings to the flood itself; a window keeps the storm bounded.
const WINDOW: usize = 16;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Pings each `(target, tries)` from inside the namespace bound at `netns`: up to `tries`
/// tries each, each waiting at most `timeout` for its reply. Returns, per target, whether a
/// reply came.
pub fn ping_from(
    netns: &Path,
    targets: &[(IpAddr, u32)],
    timeout: Duration,
) -> io::Result<Vec<bool>> {
    super::netns::in_netns(netns, || Pinger::new(targets)?.run(timeout))
}

struct Pinger<'a> {
    targets: &'a [(IpAddr, u32)],
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
    id: u16,
    replied: Vec<bool>,
}

fn raw_socket(family: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl<'a> Pinger<'a> {
    fn new(targets: &'a [(IpAddr, u32)]) -> io::Result<Self> {
        let any = |v4: bool| targets.iter().any(|(t, _)| t.is_ipv4() == v4);
        let v4 = if any(true) {
            Some(raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?)
        } else {
            None
        };
        let v6 = if any(false) {
            Some(raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?)
        } else {
            None
        };
        // The identifier tells our replies from those to other pingers in the same namespace.
        // SAFETY: gettid has no preconditions.
        let id = (unsafe { libc::gettid() } as u32 & 0xffff) as u16;
        Ok(Pinger {
            targets,
            v4,
            v6,
            id,
            replied: vec![false; targets.len()],
        })
    }

    /// Sends at most [`WINDOW`] requests ahead of their replies: each reply (or each try that
    /// timed out) lets the next one go. Every try waits up to `timeout` for its reply, and a
    /// target gets its next try once the last one timed out, as `ping -c 1 -W` would.
    fn run(mut self, timeout: Duration) -> io::Result<Vec<bool>> {
        let mut queue: VecDeque<usize> = (0..self.targets.len()).collect();
        let mut tries_left: Vec<u32> = self.targets.iter().map(|t| t.1).collect();
        let mut in_flight: Vec<(usize, Instant)> = Vec::new();
        loop {
            in_flight.retain(|(i, _)| !self.replied[*i]);
            let now = Instant::now();
            let (expired, waiting): (Vec<_>, Vec<_>) = in_flight
                .into_iter()
                .partition(|(_, sent)| now.duration_since(*sent) >= timeout);
            in_flight = waiting;
            queue.extend(expired.into_iter().map(|(i, _)| i));
            while in_flight.len() < WINDOW {
                let Some(i) = queue.pop_front() else { break };
                if self.replied[i] || tries_left[i] == 0 {
                    continue;
                }
                tries_left[i] -= 1;
                self.send(self.targets[i].0, i as u16)?;
                in_flight.push((i, Instant::now()));
            }
            let Some(first) = in_flight.iter().map(|(_, sent)| *sent).min() else {
                break;
            };
            self.collect((first + timeout).saturating_duration_since(Instant::now()))?;
        }
        Ok(self.replied)
    }

    fn send(&self, to: IpAddr, seq: u16) -> io::Result<()> {
        let mut packet = [0u8; 24];
        packet[0] = if to.is_ipv4() {
            ECHO_REQUEST_V4
        } else {
            ECHO_REQUEST_V6
        };
        packet[4..6].copy_from_slice(&self.id.to_be_bytes());
        packet[6..8].copy_from_slice(&seq.to_be_bytes());
        packet[8..].copy_from_slice(b"vxlab echo check");
        if to.is_ipv4() {
            // The kernel fills in ICMPv6 checksums itself, but not ICMPv4 ones.
            let sum = checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let (fd, addr) = match to {
            IpAddr::V4(a) => (self.v4.as_ref(), SocketAddr::V4(SocketAddrV4::new(a, 0))),
            IpAddr::V6(a) => (
                self.v6.as_ref(),
                SocketAddr::V6(SocketAddrV6::new(a, 0, 0, 0)),
            ),
        };
        let fd = fd.expect("socket opened for every family in use");
        let (storage, len) = sockaddr(addr);
        // SAFETY: packet and storage outlive the call; len matches storage's contents.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const storage).cast(),
                len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // An unreachable target is a failed ping, not a failed check run.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
            ) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for replies, and takes every reply that came.
    fn collect(&mut self, wait: Duration) -> io::Result<()> {
        let mut fds: Vec<libc::pollfd> = [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of fds.len() pollfd.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as i32,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for p in fds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
            self.drain(p.fd);
        }
        Ok(())
    }

    /// Reads every datagram waiting on `fd` and marks the targets that replied.
    fn drain(&mut self, fd: i32) {
        let mut buf = [0u8; 1500];
        loop {
            // SAFETY: zeroed sockaddr_storage is valid; recvfrom writes at most its size.
            let mut from: libc::sockaddr_storage = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if n <= 0 {
                return;
            }
            let data = &buf[..n as usize];
            let (src, icmp) = match i32::from(from.ss_family) {
                libc::AF_INET => {
                    // Raw IPv4 sockets deliver the IP header too.
                    let ihl = usize::from(data[0] & 0x0f) * 4;
                    // SAFETY: the kernel filled an AF_INET address.
                    let a: libc::sockaddr_in = unsafe { *(&raw const from).cast() };
                    (
                        IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                        data.get(ihl..).unwrap_or_default(),
                    )
                }
                libc::AF_INET6 => {
                    // SAFETY: the kernel filled an AF_INET6 address.
                    let a: libc::sockaddr_in6 = unsafe { *(&raw const from).cast() };
                    (IpAddr::from(a.sin6_addr.s6_addr), data)
                }
                _ => continue,
            };
            if icmp.len() < 8 || !matches!(icmp[0], ECHO_REPLY_V4 | ECHO_REPLY_V6) {
                continue;
            }
            let reply_v4 = icmp[0] == ECHO_REPLY_V4;
            if reply_v4 != src.is_ipv4() || u16::from_be_bytes([icmp[4], icmp[5]]) != self.id {
                continue;
            }
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if self.targets.get(seq).is_some_and(|(t, _)| *t == src) {
                self.replied[seq] = true;
            }
        }
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.ip().octets();
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // type 8, code 0, id 1, seq 1, no payload: sum 0x0802 -> checksum 0xf7fd.
        let mut p = [8u8, 0, 0, 0, 0, 1, 0, 1];
        let c = checksum(&p);
        assert_eq!(c, 0xf7fd);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }
}
