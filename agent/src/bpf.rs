//! The BPF side: loads the `fmod_ret/update_socket_protocol` program, attaches it, and keeps the
//! map of selected cgroups. The link is held by this process and never pinned: when the agent
//! exits (or drops [`Converter`]) the kernel detaches the program and new sockets are plain TCP
//! again; sockets already created keep what they are.
use std::collections::BTreeMap;
use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

mod skel {
    // The skeleton libbpf-cargo generated from src/bpf/select_smc.bpf.c (build.rs).
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::undocumented_unsafe_blocks,
        dead_code,
        missing_docs,
        unsafe_op_in_unsafe_fn,
        unused_qualifications
    )]
    include!(concat!(env!("OUT_DIR"), "/select_smc.skel.rs"));
}
use skel::{SelectSmcSkel, SelectSmcSkelBuilder};

pub struct Converter {
    // Field order matters: the link is dropped (detached) before the skeleton it belongs to.
    _link: Link,
    skel: SelectSmcSkel<'static>,
}

impl Converter {
    /// Loads and attaches the program (needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN; a kernel
    /// with BTF and fmod_ret on update_socket_protocol: 6.6+).
    pub fn attach() -> Result<Converter, String> {
        // The skeleton borrows its object storage for its whole life; the agent keeps one
        // converter for the life of the process, so the storage is leaked once.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = SelectSmcSkelBuilder::default()
            .open(storage)
            .map_err(|e| format!("opening the BPF object: {e}"))?;
        let skel = open.load().map_err(|e| {
            format!("loading the BPF program (needs CAP_BPF and CAP_PERFMON, kernel BTF): {e}")
        })?;
        let link = skel.progs.select_smc.attach().map_err(|e| {
            format!("attaching fmod_ret/update_socket_protocol (Linux 6.6+ with BTF): {e}")
        })?;
        Ok(Converter { _link: link, skel })
    }

    /// cgroup id -> sockets converted so far, as the map holds them.
    pub fn selected(&self) -> Result<BTreeMap<u64, u64>, String> {
        let map = &self.skel.maps.selected_cgroups;
        let mut out = BTreeMap::new();
        for key in map.keys() {
            let Ok(k) = <[u8; 8]>::try_from(key.as_slice()) else {
                continue;
            };
            // A key deleted between keys() and lookup() is simply gone.
            if let Some(v) = map
                .lookup(&key, MapFlags::ANY)
                .map_err(|e| format!("reading the map: {e}"))?
            {
                let n = <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_ne_bytes)
                    .unwrap_or(0);
                out.insert(u64::from_ne_bytes(k), n);
            }
        }
        Ok(out)
    }

    /// Starts converting the sockets of processes in cgroup `id`.
    pub fn select(&self, id: u64) -> Result<(), String> {
        let map = &self.skel.maps.selected_cgroups;
        // NOEXIST: a cgroup already selected keeps its count.
        match map.update(&id.to_ne_bytes(), &0u64.to_ne_bytes(), MapFlags::NO_EXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("selecting cgroup {id}: {e}")),
        }
    }

    /// Stops converting the sockets of cgroup `id`.
    pub fn release(&self, id: u64) -> Result<(), String> {
        match self.skel.maps.selected_cgroups.delete(&id.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("releasing cgroup {id}: {e}")),
        }
    }
}
