//! SMC-D devices as sysfs shows them, for the one kind that matters on ordinary servers: the
//! loopback device that lets two sockets of one kernel (pods on one node) use SMC-D.
//!
//! - Linux >= 7.0: the DIBS layer (drivers/dibs, `CONFIG_DIBS_LO`) lists its devices in
//!   `/sys/class/dibs/<name>/` with `gid` (a UUID) and `fabric_id` (`0xffff` marks the loopback
//!   device, named `lo`).
//! - Linux 6.11 to 6.x: `CONFIG_SMC_LO` made one device, `/sys/devices/virtual/smc/loopback-ism`.
//!
//! `SMC_GEN_NETLINK GET_DEV_SMCD` leaves the loopback device out (net/smc/smc_ism.c skips it:
//! it has no PCI identity), so sysfs is where it shows.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::smc_diag::DmbInfo;

/// `DIBS_LOOPBACK_FABRIC` (include/linux/dibs.h): the fabric id of the loopback device.
pub const LOOPBACK_FABRIC: u16 = 0xffff;
/// Where Linux >= 7.0 lists DIBS devices.
pub const DIBS_CLASS: &str = "/sys/class/dibs";
/// The loopback device of Linux 6.11 to 6.x (`CONFIG_SMC_LO`).
pub const SMC_LO_DEVICE: &str = "/sys/devices/virtual/smc/loopback-ism";

/// One SMC-D capable device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmcdDevice {
    /// `lo` for the DIBS loopback device, `loopback-ism` before DIBS.
    pub name: String,
    /// The device's GID as the kernel prints it (a UUID), when it says.
    pub gid: Option<String>,
    pub fabric_id: Option<u16>,
    /// Shared memory inside this kernel, not a hardware ISM device.
    pub loopback: bool,
}

impl SmcdDevice {
    /// The GID as smc_diag's DMBINFO carries it: the UUID's two big-endian halves
    /// (`copy_to_smcdgid` in net/smc/smc_ism.h).
    pub fn gid_halves(&self) -> Option<(u64, u64)> {
        let hex: String = self.gid.as_deref()?.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return None;
        }
        let hi = u64::from_str_radix(&hex[..16], 16).ok()?;
        let lo = u64::from_str_radix(&hex[16..], 16).ok()?;
        Some((hi, lo))
    }

    /// `lo (loopback)`, or the name alone for other devices.
    pub fn describe(&self) -> String {
        if self.loopback {
            format!("{} (loopback)", self.name)
        } else {
            self.name.clone()
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// `0xffff` -> 0xffff.
fn parse_fabric(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The devices under a DIBS class directory and a pre-DIBS loopback device path (parameters so
/// that tests can point them at a fake tree), sorted by name.
pub fn devices_at(dibs_class: &Path, smc_lo: &Path) -> Vec<SmcdDevice> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(dibs_class) {
        for d in dir.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let p = d.path();
            let fabric_id = read_trim(&p.join("fabric_id")).and_then(|s| parse_fabric(&s));
            out.push(SmcdDevice {
                gid: read_trim(&p.join("gid")),
                fabric_id,
                loopback: fabric_id == Some(LOOPBACK_FABRIC),
                name,
            });
        }
    }
    if smc_lo.exists() {
        out.push(SmcdDevice {
            name: "loopback-ism".into(),
            gid: None,
            fabric_id: Some(LOOPBACK_FABRIC),
            loopback: true,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The SMC-D devices of this kernel.
pub fn devices() -> Vec<SmcdDevice> {
    devices_at(Path::new(DIBS_CLASS), Path::new(SMC_LO_DEVICE))
}

/// The device an SMC-D connection uses on this side, by its GID in DMBINFO. Without GIDs in
/// sysfs (the pre-DIBS loopback) a connection whose two ends share one GID is taken to be on the
/// only loopback device.
pub fn device_of<'a>(devices: &'a [SmcdDevice], dmb: &DmbInfo) -> Option<&'a SmcdDevice> {
    let mine = (dmb.my_gid, dmb.my_gid_ext.unwrap_or(0));
    devices
        .iter()
        .find(|d| {
            d.gid_halves()
                .is_some_and(|(hi, lo)| hi == mine.0 && (dmb.my_gid_ext.is_none() || lo == mine.1))
        })
        .or_else(|| {
            let lo: Vec<_> = devices
                .iter()
                .filter(|d| d.loopback && d.gid.is_none())
                .collect();
            (dmb.same_device() && lo.len() == 1).then(|| lo[0])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmb(my: (u64, u64), peer: (u64, u64)) -> DmbInfo {
        DmbInfo {
            link_id: 1,
            peer_gid: peer.0,
            my_gid: my.0,
            token: 7,
            peer_token: 8,
            peer_gid_ext: Some(peer.1),
            my_gid_ext: Some(my.1),
        }
    }

    #[test]
    fn gid_halves_follow_the_uuid_bytes() {
        let d = SmcdDevice {
            name: "lo".into(),
            gid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
            fabric_id: Some(LOOPBACK_FABRIC),
            loopback: true,
        };
        assert_eq!(
            d.gid_halves(),
            Some((0x0f1e_2d3c_4b5a_6978, 0x8796_a5b4_c3d2_e1f0))
        );
        let other = SmcdDevice {
            name: "ism0".into(),
            gid: Some("1".into()),
            fabric_id: Some(3),
            loopback: false,
        };
        assert_eq!(other.gid_halves(), None);
        let devs = vec![d.clone(), other];
        let m = (0x0f1e_2d3c_4b5a_6978, 0x8796_a5b4_c3d2_e1f0);
        assert_eq!(device_of(&devs, &dmb(m, m)), Some(&d));
        assert_eq!(device_of(&devs, &dmb((1, 2), m)), None);
    }

    #[test]
    fn sysfs_tree_is_read() {
        let root = std::env::temp_dir().join(format!("envoy-smc-dibs-{}", std::process::id()));
        let lo = root.join("class/lo");
        fs::create_dir_all(&lo).unwrap();
        fs::write(lo.join("gid"), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        fs::write(lo.join("fabric_id"), "0xffff\n").unwrap();
        let hw = root.join("class/ism1");
        fs::create_dir_all(&hw).unwrap();
        fs::write(hw.join("fabric_id"), "0x0012\n").unwrap();
        let devs = devices_at(&root.join("class"), &root.join("none"));
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].name, "ism1");
        assert!(!devs[0].loopback);
        assert_eq!(devs[0].fabric_id, Some(0x12));
        assert_eq!(devs[1].describe(), "lo (loopback)");
        // the pre-DIBS loopback device: no GID, matched when both ends share one
        fs::create_dir_all(root.join("loopback-ism")).unwrap();
        let old = devices_at(&root.join("absent"), &root.join("loopback-ism"));
        assert_eq!(old.len(), 1);
        assert!(old[0].loopback);
        assert_eq!(device_of(&old, &dmb((5, 6), (5, 6))), Some(&old[0]));
        assert_eq!(device_of(&old, &dmb((5, 6), (7, 6))), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
