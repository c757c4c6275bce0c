//! The host's links and namespaces through rtnetlink.
//!
//! rtnetlink is async; the rest of vxlab is not. A small current-thread runtime lives inside
//! [`Netlink`] and every call blocks on it, so the async edge stays this one file.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{new_connection, Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::netns;

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that must exist does not.
    #[error("there is no link named {0}")]
    Missing(String),
    /// Another host, reached through libvirt, refused to make or remove a bridge.
    #[error("host {host}: {what}")]
    Elsewhere {
        /// The host.
        host: String,
        /// What was asked.
        what: String,
        /// Its answer.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A namespace file could not be opened.
    #[error("cannot open namespace {path}")]
    Namespace {
        /// Its bind mount.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where `ip netns` keeps named namespaces.
pub fn netns_path(name: &str) -> PathBuf {
    netns::path(name)
}

/// Host links and namespaces.
pub struct Netlink {
    inner: Mutex<(tokio::runtime::Runtime, Handle)>,
}

const ENODEV: i32 = 19;

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == ENODEV)
}

impl Netlink {
    /// Opens a netlink socket.
    pub fn open() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Socket)?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = new_connection()?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(handle)
        });
        Ok(Netlink {
            inner: Mutex::new((rt, handle.map_err(NetlinkError::Socket)?)),
        })
    }

    fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl AsyncFnOnce(Handle) -> Result<T, rtnetlink::Error>,
    ) -> Result<T, NetlinkError> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (rt, handle) = &*guard;
        rt.block_on(f(handle.clone()))
            .map_err(|source| NetlinkError::Request {
                what: what(),
                source,
            })
    }

    /// The index of link `name`, or `None` when there is none.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let n = name.to_string();
        let r = self.call(
            || format!("looking up link {name}"),
            async move |h: Handle| -> Result<Option<u32>, rtnetlink::Error> {
                match h.link().get().match_name(n).execute().try_next().await {
                    Ok(m) => Ok(m.map(|m| m.header.index)),
                    Err(e) if is_missing(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            },
        )?;
        Ok(r)
    }

    /// Whether link `index` has `address` (with its prefix length).
    fn has_address(&self, index: u32, address: IpNet) -> Result<bool, NetlinkError> {
        self.call(
            || format!("reading the addresses of link {index}"),
            async move |h: Handle| -> Result<bool, rtnetlink::Error> {
                let mut dump = h
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .set_address_filter(address.addr())
                    .execute();
                while let Some(m) = dump.try_next().await? {
                    if m.header.prefix_len == address.prefix_len() {
                        return Ok(true);
                    }
                }
                Ok(false)
            },
        )
    }

    /// Creates bridge `name` with `address` and brings it up; an existing one is reused.
    pub fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError> {
        let index = match self.link_index(name)? {
            // Up with its address: nothing to do, and nothing is written.
            Some(i)
                if super::inventory::bridge_state(name) == crate::observe::BridgeState::Up
                    && self.has_address(i, address)? =>
            {
                return Ok(());
            }
            Some(i) => i,
            None => {
                let msg = LinkBridge::new(name).up().build();
                self.call(
                    || format!("creating bridge {name}"),
                    async move |h: Handle| h.link().add(msg).execute().await,
                )?;
                self.link_index(name)?.unwrap_or_default()
            }
        };
        self.call(
            || format!("bringing up bridge {name}"),
            async move |h: Handle| {
                h.link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
            },
        )?;
        self.call(
            || format!("adding {address} to bridge {name}"),
            async move |h: Handle| {
                let mut req = h
                    .address()
                    .add(index, address.addr(), address.prefix_len())
                    .replace();
                if matches!(address.addr(), IpAddr::V6(_)) {
                    req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
                }
                req.execute().await
            },
        )
    }

    /// Creates a veth pair: `host_link` on the host, enslaved to `bridge` and up, and its peer
    /// `guest_link` with MAC `guest_mac` inside the namespace `netns`. An existing `host_link`
    /// is left as it is.
    pub fn add_veth(
        &self,
        host_link: &str,
        bridge: &str,
        (guest_link, guest_mac): (&str, [u8; 6]),
        netns: &str,
    ) -> Result<(), NetlinkError> {
        if self.link_index(host_link)?.is_some() {
            return Ok(());
        }
        let path = netns_path(netns);
        let ns = std::fs::File::open(&path).map_err(|source| NetlinkError::Namespace {
            path: path.clone(),
            source,
        })?;
        let bridge_index = self
            .link_index(bridge)?
            .ok_or_else(|| NetlinkError::Missing(bridge.to_string()))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(guest_link.to_string())
            .address(guest_mac.to_vec())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_link.to_string())
            .controller(bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.call(
            || format!("creating veth {host_link} into namespace {netns}"),
            async move |h: Handle| h.link().add(msg).execute().await,
        )?;
        // The kernel ignores an alias in the creating message; it names the link's owner.
        self.set_alias(host_link, &super::inventory::owner_alias(netns))
    }

    /// Puts host link `name` on `bridge` and brings it up: a guest's host end put back.
    pub fn plug(&self, name: &str, bridge: &str) -> Result<(), NetlinkError> {
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::Missing(name.to_string()))?;
        let bridge_index = self
            .link_index(bridge)?
            .ok_or_else(|| NetlinkError::Missing(bridge.to_string()))?;
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .up()
            .build();
        self.call(
            || format!("putting {name} on bridge {bridge}, up"),
            async move |h: Handle| h.link().set(msg).execute().await,
        )
    }

    /// Sets link `name`'s alias, which `ip link show` prints and [`super::inventory`] reads
    /// back to name a link's owner.
    pub fn set_alias(&self, name: &str, alias: &str) -> Result<(), NetlinkError> {
        // Already so (an `up` of a running lab): nothing is written.
        let path = Path::new("/sys/class/net").join(name).join("ifalias");
        if !name.contains('/') && std::fs::read_to_string(path).is_ok_and(|a| a.trim_end() == alias)
        {
            return Ok(());
        }
        let index = self
            .link_index(name)?
            .ok_or_else(|| NetlinkError::Missing(name.to_string()))?;
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.call(
            || format!("setting the alias of {name}"),
            async move |h: Handle| h.link().set(msg).execute().await,
        )
    }

    /// Deletes link `name`; returns false when there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        self.call(
            || format!("deleting link {name}"),
            async move |h: Handle| match h.link().del(index).execute().await {
                Err(e) if is_missing(&e) => Ok(false),
                r => r.map(|_| true),
            },
        )
    }

    /// Deletes several links in one kernel operation; returns how many there were.
    ///
    /// Each deletion waits for an RCU grace period, tens of milliseconds; 50 guests' links one
    /// by one took two seconds. The links are first put in a link group of their own, then the
    /// group is deleted at once, as `ip link del group N` does.
    pub fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
        // A group number no other link uses: high bit set, this process's id (pid_max is at
        // most 2^22) and a count of this process's calls, since labs are taken down in
        // parallel threads too.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x1ff;
        let group = 0x8000_0000 | ((std::process::id() & 0x3f_ffff) << 9) | call;
        let mut found = 0;
        for name in names {
            let Some(index) = self.link_index(name)? else {
                continue;
            };
            self.call(
                || format!("grouping link {name} for deletion"),
                async move |h: Handle| {
                    h.link()
                        .set(LinkUnspec::new_with_index(index).link_group(group).build())
                        .execute()
                        .await
                },
            )?;
            found += 1;
        }
        if found > 0 {
            self.call(
                || format!("deleting {found} links"),
                async move |h: Handle| {
                    h.link()
                        .del_with_message(LinkUnspec::new_with_index(0).link_group(group).build())
                        .execute()
                        .await
                },
            )?;
        }
        Ok(found)
    }

    /// Creates the named namespace, like `ip netns add`; an existing one is reused. No child
    /// process is forked (see [`netns`]).
    pub fn add_netns(&self, name: &str) -> Result<(), NetlinkError> {
        netns::add(name)
            .map(|_| ())
            .map_err(|source| NetlinkError::Namespace {
                path: netns_path(name),
                source,
            })
    }

    /// Deletes the named namespace, like `ip netns del`; returns false when there was none. A
    /// plain file left in its place by an interrupted run is removed too.
    pub fn delete_netns(&self, name: &str) -> Result<bool, NetlinkError> {
        netns::delete(name).map_err(|source| NetlinkError::Namespace {
            path: netns_path(name),
            source,
        })
    }
}
