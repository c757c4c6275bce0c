//! VXLAN packets as a student reads them: outer addresses (multicast or unicast), UDP port,
//! VNI, and a one-line summary of the inner frame (ARP, ICMP, ICMPv6). Also the pcap file
//! format, written and read by hand (a 24-byte header and a 16-byte header per packet).
//! Pure: bytes in, values out.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::lab::Mac;

/// One decoded VXLAN packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VxlanPacket {
    /// Outer source address (the sending VTEP).
    pub outer_src: IpAddr,
    /// Outer destination: the group, or a peer VTEP.
    pub outer_dst: IpAddr,
    /// Whether the outer destination is a multicast group.
    pub multicast: bool,
    /// Outer UDP source port (a hash of the inner flow).
    pub udp_src: u16,
    /// Outer UDP destination port.
    pub udp_dst: u16,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Inner source MAC.
    pub inner_src: Mac,
    /// Inner destination MAC.
    pub inner_dst: Mac,
    /// The inner frame.
    pub inner: Inner,
}

/// What the encapsulated frame carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inner {
    /// ARP request: who has `target`? tell `sender`.
    ArpRequest {
        /// Asking address.
        sender: Ipv4Addr,
        /// Address asked for.
        target: Ipv4Addr,
    },
    /// ARP reply: `sender` is at `mac`.
    ArpReply {
        /// Answered address.
        sender: Ipv4Addr,
        /// Its MAC.
        mac: Mac,
    },
    /// ICMP or ICMPv6 echo.
    Echo {
        /// Request (true) or reply.
        request: bool,
        /// Inner source address.
        src: IpAddr,
        /// Inner destination address.
        dst: IpAddr,
        /// Sequence number.
        seq: u16,
    },
    /// IPv6 neighbour solicitation or advertisement.
    Neighbour {
        /// Solicitation (true) or advertisement.
        solicitation: bool,
        /// The address asked about or announced.
        target: Ipv6Addr,
    },
    /// ICMPv6 other than echo and neighbour discovery: router solicitations and MLD reports,
    /// the autoconfiguration traffic of an IPv6 interface.
    Icmpv6 {
        /// Inner source.
        src: Ipv6Addr,
        /// Inner destination.
        dst: Ipv6Addr,
        /// The ICMPv6 type.
        icmp_type: u8,
    },
    /// Any other IP packet.
    Ip {
        /// Inner source.
        src: IpAddr,
        /// Inner destination.
        dst: IpAddr,
        /// IP protocol number.
        protocol: u8,
    },
    /// Anything else.
    Other {
        /// Ethertype.
        ethertype: u16,
    },
}

impl std::fmt::Display for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::ArpRequest { sender, target } => write!(f, "ARP who-has {target} tell {sender}"),
            Inner::ArpReply { sender, mac } => write!(f, "ARP {sender} is-at {mac}"),
            Inner::Echo {
                request,
                src,
                dst,
                seq,
            } => write!(
                f,
                "{} echo {} {src} > {dst} seq {seq}",
                if src.is_ipv4() { "ICMP" } else { "ICMPv6" },
                if *request { "request" } else { "reply" }
            ),
            Inner::Neighbour {
                solicitation,
                target,
            } => {
                if *solicitation {
                    write!(f, "ICMPv6 neighbour solicitation who-has {target}")
                } else {
                    write!(f, "ICMPv6 neighbour advertisement {target}")
                }
            }
            Inner::Icmpv6 {
                src,
                dst,
                icmp_type,
            } => write!(f, "ICMPv6 {} {src} > {dst}", icmpv6_name(*icmp_type)),
            Inner::Ip {
                src,
                dst,
                protocol: 58,
            } => write!(f, "ICMPv6 {src} > {dst}"),
            Inner::Ip { src, dst, protocol } => write!(f, "IP {src} > {dst} protocol {protocol}"),
            Inner::Other { ethertype } => write!(f, "ethertype 0x{ethertype:04x}"),
        }
    }
}

/// What an ICMPv6 message of type `t` is, in words.
fn icmpv6_name(t: u8) -> String {
    match t {
        130 => "MLD query".into(),
        131 | 143 => "MLD report".into(),
        132 => "MLD done".into(),
        133 => "router solicitation".into(),
        134 => "router advertisement".into(),
        other => format!("type {other}"),
    }
}

impl Inner {
    /// The kind of frame in a few words, to count what a capture hid ("MLD report", "ARP").
    pub fn kind(&self) -> String {
        match self {
            Inner::ArpRequest { .. } | Inner::ArpReply { .. } => "ARP".into(),
            Inner::Echo { src, .. } if src.is_ipv4() => "ICMP echo".into(),
            Inner::Echo { .. } => "ICMPv6 echo".into(),
            Inner::Neighbour { .. } => "neighbour discovery".into(),
            Inner::Icmpv6 { icmp_type, .. } => icmpv6_name(*icmp_type),
            Inner::Ip { protocol: 2, .. } => "IGMP".into(),
            Inner::Ip { protocol: 6, .. } => "TCP".into(),
            Inner::Ip { protocol: 17, .. } => "UDP".into(),
            Inner::Ip { protocol, .. } => format!("IP protocol {protocol}"),
            Inner::Other { ethertype } => format!("ethertype 0x{ethertype:04x}"),
        }
    }
}

impl VxlanPacket {
    /// One line: outer addresses with multicast or unicast, port, VNI, inner Ethernet
    /// addresses and the inner packet.
    pub fn summary(&self) -> String {
        format!(
            "{} > {} ({}) udp {} vni {} | {} > {}: {}",
            self.outer_src,
            self.outer_dst,
            if self.multicast {
                "multicast"
            } else {
                "unicast"
            },
            self.udp_dst,
            self.vni,
            self.inner_src,
            self.inner_dst,
            self.inner
        )
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn mac_at(b: &[u8], i: usize) -> Option<Mac> {
    Some(Mac(b.get(i..i + 6)?.try_into().ok()?))
}

fn v4_at(b: &[u8], i: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn v6_at(b: &[u8], i: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(i..i + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// The IP layer of an Ethernet payload: source, destination, protocol, and the payload.
fn ip_layer(ethertype: u16, b: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    match ethertype {
        0x0800 => {
            let ihl = usize::from(b.first()? & 0x0f) * 4;
            let total = usize::from(u16_at(b, 2)?).min(b.len());
            Some((
                IpAddr::V4(v4_at(b, 12)?),
                IpAddr::V4(v4_at(b, 16)?),
                *b.get(9)?,
                b.get(ihl..total)?,
            ))
        }
        0x86dd => Some((
            IpAddr::V6(v6_at(b, 8)?),
            IpAddr::V6(v6_at(b, 24)?),
            *b.get(6)?,
            b.get(40..)?,
        )),
        _ => None,
    }
}

/// An Ethernet frame: its source and destination MACs and what it carries. Used for the frame
/// inside a VXLAN packet, and for underlay frames that are not VXLAN.
pub fn ethernet(frame: &[u8]) -> Option<(Mac, Mac, Inner)> {
    let dst = mac_at(frame, 0)?;
    let src = mac_at(frame, 6)?;
    let ethertype = u16_at(frame, 12)?;
    let body = frame.get(14..)?;
    let what = match ethertype {
        0x0806 => match u16_at(body, 6)? {
            1 => Inner::ArpRequest {
                sender: v4_at(body, 14)?,
                target: v4_at(body, 24)?,
            },
            2 => Inner::ArpReply {
                sender: v4_at(body, 14)?,
                mac: mac_at(body, 8)?,
            },
            _ => Inner::Other { ethertype },
        },
        0x0800 | 0x86dd => {
            let (s, d, mut proto, mut payload) = ip_layer(ethertype, body)?;
            // MLD reports travel behind a hop-by-hop options header: skip it.
            if proto == 0 && ethertype == 0x86dd {
                let len = (usize::from(*payload.get(1)?) + 1) * 8;
                proto = *payload.first()?;
                payload = payload.get(len..)?;
            }
            match (proto, payload.first().copied()) {
                (1, Some(t @ (8 | 0))) | (58, Some(t @ (128 | 129))) => Inner::Echo {
                    request: t == 8 || t == 128,
                    src: s,
                    dst: d,
                    seq: u16_at(payload, 6)?,
                },
                (58, Some(t @ (135 | 136))) => Inner::Neighbour {
                    solicitation: t == 135,
                    target: v6_at(payload, 8)?,
                },
                (58, Some(t)) => match (s, d) {
                    (IpAddr::V6(src), IpAddr::V6(dst)) => Inner::Icmpv6 {
                        src,
                        dst,
                        icmp_type: t,
                    },
                    _ => Inner::Ip {
                        src: s,
                        dst: d,
                        protocol: proto,
                    },
                },
                _ => Inner::Ip {
                    src: s,
                    dst: d,
                    protocol: proto,
                },
            }
        }
        _ => Inner::Other { ethertype },
    };
    Some((src, dst, what))
}

/// Decodes an Ethernet frame as VXLAN to UDP port `port`; `None` for anything else.
pub fn decode(frame: &[u8], port: u16) -> Option<VxlanPacket> {
    let ethertype = u16_at(frame, 12)?;
    let (src, dst, proto, udp) = ip_layer(ethertype, frame.get(14..)?)?;
    if proto != 17 || u16_at(udp, 2)? != port {
        return None;
    }
    let vx = udp.get(8..16)?;
    // The I flag says the VNI is valid.
    if vx[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let (inner_src, inner_dst, inner) = ethernet(udp.get(16..)?)?;
    Some(VxlanPacket {
        outer_src: src,
        outer_dst: dst,
        multicast: dst.is_multicast(),
        udp_src: u16_at(udp, 0)?,
        udp_dst: port,
        vni,
        inner_src,
        inner_dst,
        inner,
    })
}

/// One captured frame with its time.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Microseconds since the epoch.
    pub micros: u64,
    /// The bytes, from the Ethernet header.
    pub data: Vec<u8>,
}

/// Writes `frames` as a pcap file (microsecond timestamps, Ethernet).
pub fn write_pcap(w: &mut impl Write, frames: &[Frame]) -> io::Result<()> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&65535u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    w.write_all(&h)?;
    for f in frames {
        let len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        let secs = u32::try_from(f.micros / 1_000_000).unwrap_or(u32::MAX);
        let us = (f.micros % 1_000_000) as u32;
        for v in [secs, us, len, len] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&f.data)?;
    }
    Ok(())
}

/// Reads a pcap file written by [`write_pcap`], or by tcpdump (either byte order, micro- or
/// nanosecond timestamps).
pub fn read_pcap(r: &mut impl Read) -> io::Result<Vec<Frame>> {
    let mut all = Vec::new();
    r.read_to_end(&mut all)?;
    let mut stream = PcapStream::default();
    stream.push(&all);
    let mut frames = Vec::new();
    while let Some(f) = stream.next_frame()? {
        frames.push(f);
    }
    if !stream.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated pcap: the last packet is cut short",
        ));
    }
    Ok(frames)
}

/// A pcap stream read as it comes (`tcpdump -U -w -` on another host): bytes are pushed in as
/// they arrive and whole frames taken out.
#[derive(Debug, Default)]
pub struct PcapStream {
    buf: Vec<u8>,
    /// The file header's byte order (big-endian) and whether times are in nanoseconds, once
    /// it has been read.
    format: Option<(bool, bool)>,
}

impl PcapStream {
    /// Adds bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether nothing is left over (no partial header or packet).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole frame, or `None` until more bytes are pushed.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let (big, nanos) = match self.format {
            Some(f) => f,
            None => {
                if self.buf.len() < 24 {
                    return Ok(None);
                }
                let magic = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                let f = match u32::from_le_bytes(magic) {
                    0xa1b2_c3d4 => (false, false),
                    0xa1b2_3c4d => (false, true),
                    0xd4c3_b2a1 => (true, false),
                    0x4d3c_b2a1 => (true, true),
                    _ => return Err(bad("not a pcap stream")),
                };
                let word = |i: usize| read_u32(&self.buf[i..i + 4], f.0);
                if word(20) != 1 {
                    return Err(bad("not an Ethernet capture"));
                }
                self.buf.drain(..24);
                self.format = Some(f);
                f
            }
        };
        if self.buf.len() < 16 {
            return Ok(None);
        }
        let word = |i: usize| read_u32(&self.buf[i..i + 4], big);
        let (secs, frac, len) = (word(0), word(4), word(8) as usize);
        if len > 1 << 18 {
            return Err(bad("a packet longer than any link's"));
        }
        if self.buf.len() < 16 + len {
            return Ok(None);
        }
        let data = self.buf[16..16 + len].to_vec();
        self.buf.drain(..16 + len);
        let micros = if nanos { frac / 1000 } else { frac };
        Ok(Some(Frame {
            micros: u64::from(secs) * 1_000_000 + u64::from(micros),
            data,
        }))
    }
}

fn read_u32(b: &[u8], big: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pcap_stream_gives_whole_frames_as_bytes_arrive_in_any_pieces() {
        let frames = vec![
            Frame {
                micros: 1_700_000_000_123_456,
                data: vec![1; 60],
            },
            Frame {
                micros: 1_700_000_001_000_001,
                data: vec![2; 98],
            },
        ];
        let mut file = Vec::new();
        write_pcap(&mut file, &frames).unwrap();
        let mut s = PcapStream::default();
        let mut got = Vec::new();
        for piece in file.chunks(7) {
            s.push(piece);
            while let Some(f) = s.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(s.is_empty());
        // Big-endian, nanosecond files as other hosts may write them.
        let mut be = vec![0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4];
        be.extend_from_slice(&[0; 8]);
        be.extend_from_slice(&65535u32.to_be_bytes());
        be.extend_from_slice(&1u32.to_be_bytes());
        for v in [7u32, 5_000, 3, 3] {
            be.extend_from_slice(&v.to_be_bytes());
        }
        be.extend_from_slice(&[9, 9, 9]);
        let f = read_pcap(&mut be.as_slice()).unwrap();
        assert_eq!((f[0].micros, f[0].data.clone()), (7_000_005, vec![9, 9, 9]));
        assert!(read_pcap(&mut &file[..file.len() - 1]).is_err());
        assert!(read_pcap(&mut &b"not a pcap file at all, really"[..]).is_err());
    }

    /// An outer IPv4/UDP/VXLAN packet around `inner`.
    fn wrap(dst: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x01, 0x00, 0x5e, 0x01, 0x01, 0x01, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00,
        ];
        let total = (20 + 8 + 8 + inner.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[192, 168, 10, 2]);
        f.extend_from_slice(&dst);
        let ulen = (8 + 8 + inner.len()) as u16;
        f.extend_from_slice(&[0xc0, 0x01, 0x12, 0xb5, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        let v = vni.to_be_bytes();
        f.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
        f.extend_from_slice(inner);
        f
    }

    fn arp_request() -> Vec<u8> {
        let mut a = vec![0xff; 6];
        a.extend_from_slice(&[2, 0x19, 0, 0, 0x2a, 1, 0x08, 0x06]);
        a.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        a.extend_from_slice(&[2, 0x19, 0, 0, 0x2a, 1, 192, 168, 42, 2]);
        a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 168, 42, 3]);
        a
    }

    #[test]
    fn an_arp_request_to_the_group_decodes_with_its_vni() {
        let p = decode(&wrap([239, 1, 1, 1], 42, &arp_request()), 4789).unwrap();
        assert!(p.multicast);
        assert_eq!(p.vni, 42);
        assert_eq!(p.udp_dst, 4789);
        assert_eq!(
            p.summary(),
            "192.168.10.2 > 239.1.1.1 (multicast) udp 4789 vni 42 | 02:19:00:00:2a:01 > \
             ff:ff:ff:ff:ff:ff: ARP who-has 192.168.42.3 tell 192.168.42.2"
        );
        // Another port is not this lab's VXLAN.
        assert_eq!(
            decode(&wrap([239, 1, 1, 1], 42, &arp_request()), 8472),
            None
        );
    }

    #[test]
    fn an_echo_request_inside_unicast_vxlan_decodes() {
        let mut icmp = vec![2, 0x19, 0, 0, 0x2a, 2, 2, 0x19, 0, 0, 0x2a, 1, 0x08, 0x00];
        icmp.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0]);
        icmp.extend_from_slice(&[192, 168, 42, 2, 192, 168, 42, 3]);
        icmp.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
        let p = decode(&wrap([192, 168, 10, 3], 42, &icmp), 4789).unwrap();
        assert!(!p.multicast);
        assert_eq!(
            p.inner.to_string(),
            "ICMP echo request 192.168.42.2 > 192.168.42.3 seq 1"
        );
    }

    #[test]
    fn router_solicitations_and_mld_reports_are_named() {
        // An IPv6 header from fe80::1 to ff02::2 around `payload` with next header `next`.
        let v6 = |next: u8, payload: &[u8]| {
            let mut f = vec![0x33, 0x33, 0, 0, 0, 2, 2, 0x19, 0, 0, 0x2a, 1, 0x86, 0xdd];
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, payload.len() as u8, next, 255]);
            f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            f.extend_from_slice(payload);
            f
        };
        let rs = ethernet(&v6(58, &[133, 0, 0, 0, 0, 0, 0, 0])).unwrap().2;
        assert_eq!(
            rs.to_string(),
            "ICMPv6 router solicitation fe80::1 > ff02::2"
        );
        assert_eq!(rs.kind(), "router solicitation");
        // Hop-by-hop (8 bytes: next header ICMPv6, router alert), then an MLDv2 report.
        let mut hbh = vec![58, 0, 5, 2, 0, 0, 1, 0];
        hbh.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ethernet(&v6(0, &hbh)).unwrap().2.kind(), "MLD report");
    }

    #[test]
    fn pcap_round_trips() {
        let frames = vec![
            Frame {
                micros: 1_700_000_000_123_456,
                data: wrap([239, 1, 1, 1], 42, &arp_request()),
            },
            Frame {
                micros: 1_700_000_000_223_456,
                data: vec![1, 2, 3],
            },
        ];
        let mut buf = Vec::new();
        write_pcap(&mut buf, &frames).unwrap();
        assert_eq!(buf.len(), 24 + 16 * 2 + frames[0].data.len() + 3);
        assert_eq!(read_pcap(&mut buf.as_slice()).unwrap(), frames);
    }
}
