//! A lab's bridge on a remote host, made by libvirt as a network: the bridge with the lab's
//! gateway address, no forwarding, no DHCP, no DNS. The network is named after the bridge,
//! so `down` finds it from the bridge name alone.

use ipnet::IpNet;
use serde_json::json;
use virt::connect::Connect;
use virt::network::Network;

use crate::templates::render;

/// The libvirt network that holds bridge `bridge`.
pub fn network_name(bridge: &str) -> String {
    format!("vxlab-{bridge}")
}

/// The network's XML: bridge `bridge` with `gateway` (the bridge's address in the underlay).
pub fn network_xml(bridge: &str, gateway: IpNet, lab: &str) -> String {
    render(
        "network.xml",
        &json!({
            "name": network_name(bridge),
            "title": format!("vxlab: {lab}"),
            "bridge": bridge,
            "family": if gateway.addr().is_ipv4() { "ipv4" } else { "ipv6" },
            "address": gateway.addr().to_string(),
            "prefix": gateway.prefix_len(),
        }),
    )
}

fn lookup(conn: &Connect, bridge: &str) -> Result<Option<Network>, virt::error::Error> {
    match Network::lookup_by_name(conn, &network_name(bridge)) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.code() == virt::error::ErrorNumber::NoNetwork => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the network of bridge `bridge` is defined.
pub fn exists(conn: &Connect, bridge: &str) -> Result<bool, virt::error::Error> {
    Ok(lookup(conn, bridge)?.is_some())
}

/// Defines and starts the network of bridge `bridge` unless it runs already.
pub fn ensure(
    conn: &Connect,
    bridge: &str,
    gateway: IpNet,
    lab: &str,
) -> Result<(), virt::error::Error> {
    let net = match lookup(conn, bridge)? {
        Some(n) => n,
        None => Network::define_xml(conn, &network_xml(bridge, gateway, lab))?,
    };
    if !net.is_active()? {
        net.create()?;
    }
    Ok(())
}

/// Stops and undefines the network of bridge `bridge` (libvirt deletes the bridge); false
/// when there was none.
pub fn remove(conn: &Connect, bridge: &str) -> Result<bool, virt::error::Error> {
    let Some(net) = lookup(conn, bridge)? else {
        return Ok(false);
    };
    if net.is_active()? {
        net.destroy()?;
    }
    net.undefine()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_the_labs_bridge_and_nothing_more() {
        let xml = network_xml("vbr0-1", "10.100.0.1/24".parse().unwrap(), "two-vm-1");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let node = |tag: &str| doc.descendants().find(|n| n.has_tag_name(tag)).unwrap();
        assert_eq!(node("name").text(), Some("vxlab-vbr0-1"));
        assert_eq!(node("bridge").attribute("name"), Some("vbr0-1"));
        assert_eq!(node("bridge").attribute("stp"), Some("off"));
        assert_eq!(node("dns").attribute("enable"), Some("no"));
        assert_eq!(node("ip").attribute("address"), Some("10.100.0.1"));
        assert_eq!(node("ip").attribute("prefix"), Some("24"));
        // No forwarding (isolated) and no DHCP: nothing but the bridge and its address.
        assert!(!xml.contains("<forward") && !xml.contains("<dhcp"));
        let v6 = network_xml("b", "fd00:100::1/64".parse().unwrap(), "x");
        assert!(v6.contains("family='ipv6'"), "{v6}");
    }
}
