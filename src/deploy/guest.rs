//! The Proxmox guest configuration a generation runs with: parameters of
//! `POST /nodes/{node}/lxc` and `POST /nodes/{node}/qemu`, with the
//! uploaded volumes left as placeholders so a generation's record can be
//! replayed by `kiln rollback` without evaluating the repo.

use std::collections::BTreeMap;

use crate::builders::vm::spec::{VmSpec, mac};
use crate::eval::spec::SystemConfig;
use crate::profile::Generation;

/// Placeholders for the uploaded volumes in a generation's `guest` map.
pub const TEMPLATE: &str = "@template@";
pub const DISK: &str = "@disk@";
pub const SEED: &str = "@seed@";

/// Keys kiln sets itself on every deploy (not part of `guest`).
pub const GENERATED: [&str; 2] = ["tags", "description"];

/// Whole GiB, rounded up (Proxmox allocates new volumes as `STORAGE:GiB`).
fn gib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

/// The LXC parameters for `host`: everything `POST /nodes/{node}/lxc`
/// takes except `vmid`, `tags` and `description`, with `ostemplate` as
/// [`TEMPLATE`]. Data volumes are `mpN` in the new-volume form
/// (`STORAGE:GiB,mp=PATH`); a replace keeps the existing volume instead.
pub fn lxc_params(host: &str, config: &SystemConfig) -> BTreeMap<String, String> {
    let p = &config.proxmox;
    let mut params = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        params.insert(key.to_owned(), value);
    };
    set("ostemplate", TEMPLATE.to_owned());
    set(
        "hostname",
        config.hostname.clone().unwrap_or_else(|| host.to_owned()),
    );
    set("arch", "amd64".to_owned());
    set("cores", p.cores.to_string());
    set("memory", p.memory.div_ceil(1 << 20).to_string());
    set("swap", p.swap.div_ceil(1 << 20).to_string());
    set("rootfs", format!("{}:{}", p.storage, gib(p.disk)));
    set("unprivileged", u8::from(p.unprivileged).to_string());
    set("onboot", u8::from(p.onboot).to_string());
    if let Some(order) = p.startup_order {
        set("startup", format!("order={order}"));
    }
    if !p.features.is_empty() {
        let features: Vec<String> = p.features.iter().map(|f| format!("{f}=1")).collect();
        set("features", features.join(","));
    }
    if !config.network.nameservers.is_empty() {
        set("nameserver", config.network.nameservers.join(" "));
    }
    if !config.network.search.is_empty() {
        set("searchdomain", config.network.search.join(" "));
    }
    let interfaces: Vec<(String, Option<&crate::eval::spec::Interface>)> =
        if config.network.interfaces.is_empty() {
            vec![("eth0".to_owned(), None)]
        } else {
            config
                .network
                .interfaces
                .iter()
                .map(|(name, i)| (name.clone(), Some(i)))
                .collect()
        };
    for (index, (name, interface)) in interfaces.iter().enumerate() {
        // The same MAC on every deploy (DHCP reservations and ARP caches
        // survive a new generation), derived as for VMs.
        let mut value = format!("name={name},hwaddr={}", mac(host, name));
        match interface {
            None => value.push_str(&format!(",bridge={},ip=dhcp,firewall=1", p.bridge)),
            Some(i) => {
                value.push_str(&format!(",bridge={}", i.bridge));
                let v4 = i.address.iter().find(|a| !a.contains(':'));
                let v6 = i.address.iter().find(|a| a.contains(':'));
                match (i.dhcp, v4) {
                    (true, _) => value.push_str(",ip=dhcp"),
                    (false, Some(address)) => value.push_str(&format!(",ip={address}")),
                    (false, None) => {}
                }
                if let Some(gateway) = &i.gateway {
                    value.push_str(&format!(",gw={gateway}"));
                }
                if let Some(address) = v6 {
                    value.push_str(&format!(",ip6={address}"));
                }
                if let Some(gateway) = &i.gateway6 {
                    value.push_str(&format!(",gw6={gateway}"));
                }
                if let Some(vlan) = i.vlan {
                    value.push_str(&format!(",tag={vlan}"));
                }
                if let Some(mtu) = i.mtu {
                    value.push_str(&format!(",mtu={mtu}"));
                }
                value.push_str(&format!(",firewall={}", u8::from(i.firewall)));
            }
        }
        set(&format!("net{index}"), value);
    }
    for (index, disk) in p.disks.values().enumerate() {
        let storage = disk.storage.as_deref().unwrap_or(&p.storage);
        let mut value = format!("{storage}:{}", gib(disk.size));
        if let Some(mountpoint) = &disk.mountpoint {
            value.push_str(&format!(",mp={mountpoint}"));
        }
        value.push_str(&format!(",backup={}", u8::from(disk.backup)));
        set(&format!("mp{index}"), value);
    }
    params
}

/// The VM parameters from the image's `vm.json`: `POST /nodes/{node}/qemu`
/// without `vmid`, `tags` and `description`, the boot disk importing
/// [`DISK`] and the seed drive holding [`SEED`]. Also the boot disk's slot
/// and the size to grow it to.
pub fn vm_params(spec: &VmSpec) -> (BTreeMap<String, String>, (String, String)) {
    let mut params = spec.create_params(DISK, SEED);
    params.remove("vmid");
    for key in GENERATED {
        params.remove(key);
    }
    let boot = &spec.volumes.boot;
    (params, (boot.slot.clone(), boot.size.clone()))
}

/// Fill the volume placeholders.
pub fn substitute(
    params: &BTreeMap<String, String>,
    volumes: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(key, value)| {
            let mut value = value.clone();
            for (placeholder, role) in [(TEMPLATE, "template"), (DISK, "disk"), (SEED, "seed")] {
                if let Some(volume) = volumes.get(role) {
                    value = value.replace(placeholder, volume);
                }
            }
            (key.clone(), value)
        })
        .collect()
}

/// The tag kiln puts on generation `number`.
pub fn generation_tag(number: u32) -> String {
    format!("kiln-g{number}")
}

/// The guest's tags: the host's own, `kiln`, the generation and the first
/// 12 characters of the store hash (Proxmox lower-cases and sorts tags:
/// pve-guest-common `PVE::GuestHelpers::get_unique_tags`).
pub fn tags(own: &[String], generation: &Generation) -> String {
    let mut tags: Vec<String> = own.to_vec();
    tags.push("kiln".to_owned());
    tags.push(generation_tag(generation.number));
    tags.push(format!(
        "kiln-{}",
        &generation.store_hash()[..12.min(generation.store_hash().len())]
    ));
    tags.sort();
    tags.dedup();
    tags.join(";")
}

/// The longest description Proxmox stores (`description` maxLength 8192).
const DESCRIPTION_MAX: usize = 8192;

/// The guest's notes: what it runs and its history, newest first, as many
/// generations as fit, so the history survives the loss of the machine
/// that deployed it. `history` is every generation, oldest first.
pub fn description(current: &Generation, history: &[Generation]) -> String {
    let mut text = format!(
        "Managed by kiln: changes made here are replaced on the next deploy.\n\n\
         kiln-host: {}\nkiln-generation: {}\nkiln-store-path: {}\nkiln-derivation: {}\n\
         kiln-revision: {}\nkiln-deployed: {}\n\nHistory (generation, store hash, deployed, revision, outcome):\n",
        current.host,
        current.number,
        current.store_path,
        current.derivation,
        current.revision.as_deref().unwrap_or("-"),
        current.created,
    );
    for generation in history.iter().rev() {
        let outcome = match &generation.outcome {
            crate::profile::Outcome::Succeeded => "ok",
            crate::profile::Outcome::InProgress => "deploying",
            crate::profile::Outcome::Failed { .. } => "failed",
        };
        let line = format!(
            "- {} {} {} {} {outcome}\n",
            generation.number,
            generation.store_hash(),
            generation.created,
            generation.revision.as_deref().unwrap_or("-"),
        );
        if text.len() + line.len() > DESCRIPTION_MAX {
            break;
        }
        text.push_str(&line);
    }
    text
}

/// The generation numbers and store hashes recorded in a guest's notes
/// (written by [`description`]), newest first.
pub fn history_from_description(text: &str) -> Vec<(u32, String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("- ")?.split_whitespace();
            let number = words.next()?.parse().ok()?;
            let hash = words.next()?.to_owned();
            let deployed = words.next()?.to_owned();
            Some((number, hash, deployed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(number: u32) -> Generation {
        Generation::example("db", number)
    }

    #[test]
    fn notes_keep_the_history_within_proxmox_limit() {
        let history: Vec<Generation> = (1..=400).map(generation).collect();
        let text = description(&history[399], &history);
        assert!(text.len() <= DESCRIPTION_MAX);
        let parsed = history_from_description(&text);
        assert_eq!(parsed[0].0, 400);
        assert_eq!(parsed[0].1, format!("{:0>32}", 400));
        assert!(parsed.len() > 50, "{}", parsed.len());
    }

    #[test]
    fn tags_are_valid_sorted_and_carry_the_generation() {
        let tags = tags(&["db".to_owned(), "kiln".to_owned()], &generation(3));
        assert_eq!(tags, "db;kiln;kiln-000000000000;kiln-g3");
    }
}
