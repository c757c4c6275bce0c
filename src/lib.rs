//! vxlab builds VXLAN teaching labs declaratively.
//!
//! The flow: a [`lab`] file is read and validated, turned into a [`plan`] (exact commands per
//! guest), executed by the [`engine`] through a [`driver`] (network namespaces or libvirt
//! guests), then [`observe`]d from the kernel's JSON output, [`verify`]d against the plan, and
//! [`report`]ed. [`state`] records every resource before it is created, so `down` removes all of
//! it, even after an `up` that died half-way.

pub mod builder;
pub mod cli;
pub mod commands;
pub mod driver;
pub mod engine;
pub mod graph;
pub mod host;
pub mod iproute2;
pub mod lab;
pub mod observe;
pub mod packet;
pub mod plan;
pub mod progress;
pub mod report;
pub mod state;
pub mod templates;
pub mod verify;
pub mod views;

/// Reads `tests/fixtures/NAME`, recorded output of real tools, for unit tests.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
