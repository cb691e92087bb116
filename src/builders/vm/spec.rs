//! `vm.json`: what Proxmox needs to create the VM, from the host's
//! `proxmox` and `network` options.
//!
//! The parameters are those of `POST /nodes/{node}/qemu`, as Proxmox's API
//! takes them (every value a string). The volumes kiln uploads are not
//! known until deploy, so `create` leaves them out and `volumes` describes
//! them; [`VmSpec::create_params`] fills them in. How Proxmox maps the
//! drives onto QEMU devices (from qemu-server, `PVE/QemuServer/DriveDevice.pm`
//! at commit e6352be): `ide2` on q35 is `ide-cd,bus=ide.1,unit=0`, a port of
//! the ICH9 AHCI controller, so the guest kernel needs `ahci` (on i440fx,
//! `ata_piix`) plus `sr_mod` and `isofs` to read the seed; `scsi0` under
//! `virtio-scsi-single` is a `scsi-hd` on its own `virtio-scsi-pci`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::eval::spec::SystemConfig;

pub const SPEC_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub version: u32,
    pub host: String,
    pub node: Option<String>,
    pub vmid: Option<u32>,
    /// `POST /nodes/{node}/qemu` parameters other than the volumes.
    pub create: BTreeMap<String, String>,
    pub volumes: Volumes,
    /// Interface name in the guest → the MAC kiln gave it (also in the seed's
    /// network-config, which matches on it).
    pub macs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volumes {
    /// The boot disk: `disk.qcow2` imported onto `storage`, then grown to
    /// `size` (cloud-init grows the partition and file system on boot).
    pub boot: BootDisk,
    /// The cloud-init seed, uploaded as an ISO and attached as a CD-ROM.
    pub seed: SeedDrive,
    /// The EFI vars disk.
    pub efidisk: EfiDisk,
    /// Data disks, by name (`proxmox.disks`), kept across generations.
    pub data: BTreeMap<String, DataDisk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootDisk {
    /// `scsi0`.
    pub slot: String,
    pub storage: String,
    pub file: String,
    /// Proxmox size string (`64G`).
    pub size: String,
    /// Drive options besides the volume (`discard=on,iothread=1`).
    pub options: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedDrive {
    /// `ide2`.
    pub slot: String,
    /// Storage with content `iso`.
    pub storage: String,
    pub file: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfiDisk {
    pub storage: String,
    /// `efidisk0` value without the volume.
    pub options: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataDisk {
    pub slot: String,
    pub storage: String,
    /// Size in GiB, as Proxmox allocates new volumes (`STORAGE:SIZE`).
    pub size_gib: u64,
    pub backup: bool,
}

/// A locally administered MAC for interface `interface` of `host`: the
/// same on every build, different between hosts.
pub fn mac(host: &str, interface: &str) -> String {
    let digest = Sha256::digest(format!("kiln-mac-v1:{host}:{interface}"));
    let mut bytes = [0u8; 6];
    bytes.copy_from_slice(&digest[..6]);
    // Locally administered, unicast.
    bytes[0] = (bytes[0] & 0xfc) | 0x02;
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `1073741824` → `1G`; sizes not in whole GiB in MiB (`512M`).
fn size_string(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes.div_ceil(1 << 20))
    }
}

impl VmSpec {
    pub fn from_config(
        host: &str,
        config: &SystemConfig,
        disk_file: &str,
        seed_file: &str,
    ) -> VmSpec {
        let p = &config.proxmox;
        let mut create = BTreeMap::new();
        let mut set = |key: &str, value: String| {
            create.insert(key.to_owned(), value);
        };
        set(
            "name",
            config.hostname.clone().unwrap_or_else(|| host.to_owned()),
        );
        if let Some(vmid) = p.vmid {
            set("vmid", vmid.to_string());
        }
        set("cores", p.cores.to_string());
        set("memory", p.memory.div_ceil(1 << 20).to_string());
        set("machine", p.machine.clone());
        set("bios", p.bios.clone());
        set("cpu", p.cpu.clone());
        set("scsihw", p.scsihw.clone());
        set("ostype", "l26".to_owned());
        set(
            "agent",
            if p.agent { "enabled=1" } else { "enabled=0" }.to_owned(),
        );
        set("onboot", u8::from(p.onboot).to_string());
        if let Some(order) = p.startup_order {
            set("startup", format!("order={order}"));
        }
        if !p.tags.is_empty() {
            set("tags", p.tags.join(";"));
        }
        // The kernel's console is the serial port too (the boot entry says
        // `console=ttyS0`): `qm terminal` and the API's serial console work.
        set("serial0", "socket".to_owned());
        set("boot", "order=scsi0".to_owned());
        let mut macs = BTreeMap::new();
        for (index, (name, interface)) in config.network.interfaces.iter().enumerate() {
            let mac = mac(host, name);
            let mut value = format!("virtio={mac},bridge={}", interface.bridge);
            if let Some(vlan) = interface.vlan {
                value.push_str(&format!(",tag={vlan}"));
            }
            if let Some(mtu) = interface.mtu {
                value.push_str(&format!(",mtu={mtu}"));
            }
            value.push_str(&format!(",firewall={}", u8::from(interface.firewall)));
            set(&format!("net{index}"), value);
            macs.insert(name.clone(), mac);
        }
        if config.network.interfaces.is_empty() {
            let mac = mac(host, "eth0");
            set(
                "net0",
                format!("virtio={mac},bridge={},firewall=1", p.bridge),
            );
            macs.insert("eth0".to_owned(), mac);
        }
        let data = config
            .proxmox
            .disks
            .iter()
            .enumerate()
            .map(|(index, (name, disk))| {
                (
                    name.clone(),
                    DataDisk {
                        slot: format!("scsi{}", index + 1),
                        storage: disk.storage.clone().unwrap_or_else(|| p.storage.clone()),
                        size_gib: disk.size.div_ceil(1 << 30),
                        backup: disk.backup,
                    },
                )
            })
            .collect();
        VmSpec {
            version: SPEC_VERSION,
            host: host.to_owned(),
            node: p.node.clone(),
            vmid: p.vmid,
            create,
            volumes: Volumes {
                boot: BootDisk {
                    slot: "scsi0".to_owned(),
                    storage: p.storage.clone(),
                    file: disk_file.to_owned(),
                    size: size_string(p.disk),
                    options: "discard=on,iothread=1".to_owned(),
                },
                seed: SeedDrive {
                    slot: "ide2".to_owned(),
                    storage: p.template_storage.clone(),
                    file: seed_file.to_owned(),
                },
                efidisk: EfiDisk {
                    storage: p.storage.clone(),
                    // Secure Boot off: the disk boots systemd-boot, which
                    // Debian does not sign (Proxmox's default for new VMs
                    // is pre-enrolled Microsoft keys, which would refuse it).
                    options: "efitype=4m,pre-enrolled-keys=0".to_owned(),
                },
                data,
            },
            macs,
        }
    }

    /// The full `POST /nodes/{node}/qemu` parameters once the disk has been
    /// uploaded as `disk_volume` (an `import` volume, e.g.
    /// `local:import/docker-host-….qcow2`) and the seed as `seed_volume`
    /// (`local:iso/….iso`).
    pub fn create_params(&self, disk_volume: &str, seed_volume: &str) -> BTreeMap<String, String> {
        let mut params = self.create.clone();
        let v = &self.volumes;
        params.insert(
            v.boot.slot.clone(),
            format!(
                "{}:0,import-from={disk_volume},{}",
                v.boot.storage, v.boot.options
            ),
        );
        params.insert(v.seed.slot.clone(), format!("{seed_volume},media=cdrom"));
        params.insert(
            "efidisk0".to_owned(),
            format!("{}:1,{}", v.efidisk.storage, v.efidisk.options),
        );
        for disk in v.data.values() {
            let mut value = format!("{}:{}", disk.storage, disk.size_gib);
            if !disk.backup {
                value.push_str(",backup=0");
            }
            params.insert(disk.slot.clone(), value);
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_local_unicast() {
        let a = mac("docker-host", "eth0");
        assert_eq!(a, mac("docker-host", "eth0"));
        assert_ne!(a, mac("docker-host", "eth1"));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{a}");
        assert_eq!(a.len(), 17);
    }

    #[test]
    fn sizes() {
        assert_eq!(size_string(64 << 30), "64G");
        assert_eq!(size_string(512 << 20), "512M");
    }
}
