//! vxlab builds VXLAN teaching labs declaratively.
//!
//! The flow: a [`lab`] file is read and validated, turned into a [`plan`] (names and exact
//! commands per guest, built by [`guest_command`]); the [`engine`] provisions it through a
//! [`driver`] (network namespaces or libvirt guests) and the [`host`], [`observe`]s each guest
//! from the kernel's JSON output, [`converge`]s it to the plan and [`verify`]s it, both pure
//! comparisons; [`report`] and [`views`] present the [`outcome`], with the meaning of every row
//! from [`explain`]. [`state`] records every resource before it is created, so `down` removes all
//! of it, even after an `up` that died half-way.
//!
//! Around that: [`host_side`] writes vxlab's own work on the host as commands, so `plan` and
//! `walk` show the whole lab; [`wire`] says what a capture shows; [`workshop`] gives copies of a
//! lab their underlays from a pool, and [`hosts`] spreads the copies of a class over several
//! hypervisors reached through libvirt remote connections; [`cli`], [`complete`] and [`manual`] are the command line,
//! its completions and its man page.

pub mod builder;
pub mod cli;
pub mod commands;
pub mod complete;
pub mod converge;
pub mod driver;
pub mod engine;
pub mod explain;
pub mod graph;
pub mod guest_command;
pub mod health;
pub mod host;
pub mod host_side;
pub mod hosts;
pub mod interrupt;
pub mod iproute2;
pub mod lab;
pub mod manual;
pub mod observe;
pub mod outcome;
pub mod packet;
pub mod parallel;
pub mod plan;
pub mod progress;
pub mod report;
pub mod state;
pub mod templates;
pub mod terminal;
pub mod verify;
pub mod views;
pub mod web;
pub mod wire;
pub mod workshop;

/// Reads `tests/fixtures/NAME`, recorded output of real tools, for unit tests.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A guest state recorded from a real lab by `tests/fixtures/states/record.sh`, with the plan
/// of the shipped lab it was recorded from, for unit tests.
#[cfg(test)]
pub(crate) struct Recorded {
    /// The plan of `labs/<lab>.yaml`.
    pub plan: plan::Plan,
    /// The guest it was recorded in.
    pub guest: String,
    /// What the guest's kernel reported.
    pub state: observe::GuestState,
}

#[cfg(test)]
pub(crate) fn recorded(name: &str) -> Recorded {
    let v: serde_json::Value = serde_json::from_str(&fixture(&format!("states/{name}.json")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = |k: &str| v[k].to_string();
    let lab = v["lab"].as_str().unwrap();
    let file = format!("{}/labs/{lab}.yaml", env!("CARGO_MANIFEST_DIR"));
    let plan = plan::plan(&lab::load(std::path::Path::new(&file)).unwrap());
    let mut state = observe::GuestState::new(
        observe::read_links(true, &text("links")).unwrap(),
        observe::read_addresses(true, &text("addresses")).unwrap(),
    );
    state.routes = observe::read_routes(true, &text("routes")).unwrap();
    state.groups = observe::read_groups(true, &text("groups")).unwrap();
    for (dev, out) in v["fdb"].as_object().unwrap() {
        let entries = observe::read_fdb(true, &out.to_string()).unwrap();
        state.fdb.insert(dev.clone(), entries);
    }
    for (dev, out) in v["neighbours"].as_object().unwrap() {
        let n = observe::read_neighbours(true, &out.to_string()).unwrap();
        state.neighbours.insert(dev.clone(), n);
    }
    Recorded {
        plan,
        guest: v["guest"].as_str().unwrap().to_string(),
        state,
    }
}
