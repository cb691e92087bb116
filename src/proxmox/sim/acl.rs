//! Token privileges: PVE's ACL check, and which endpoint checks what.
//!
//! pve-access-control `src/PVE/RPCEnvironment.pm`: `check` (every
//! privilege, the first missing one named), `check_any` (one of them,
//! all named, `|`-joined), `exec_api2_perm_check` (a method's schema
//! `permissions.check`, run before its code) and `raise_perm_exc` in
//! pve-common `src/PVE/Exception.pm` (403, "Permission check failed
//! (PATH, PRIV)"). `src/PVE/AccessControl.pm` `roles`: walking from `/`
//! to the path, the deepest ACL entry for the token replaces what the
//! levels above gave (propagation), which is what a token's
//! [`TokenConfig::privileges`] map models. A token is never `root@pam`, so
//! the root-only checks always refuse it.

use axum::http::StatusCode;

use super::config::TokenConfig;
use super::server::{Call, Reply};

/// What PVE 9.1 checks for one endpoint the simulator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointPermission {
    pub method: &'static str,
    /// The schema's path template.
    pub path: &'static str,
    /// The schema's `permissions.check`, run before the handler: ACL path
    /// template, privileges, and whether one of them suffices (`any`).
    pub check: Option<(&'static str, &'static [&'static str], bool)>,
    /// What the handler checks itself, from the parameters.
    pub inside: &'static str,
    /// Where the checks are (Proxmox repository and file).
    pub source: &'static str,
}

const VM_CONFIG_QEMU: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.HWType",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
];
const VM_CONFIG_LXC: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
];
const QEMU: &str = "qemu-server src/PVE/API2/Qemu.pm";
const LXC: &str = "pve-container src/PVE/API2/LXC.pm, src/PVE/LXC.pm check_ct_modify_config_perm";

/// Every endpoint the simulator models, with PVE 9.1's checks. The
/// `check` column is enforced by the dispatcher from this table; the
/// `inside` checks by the handlers.
pub const PERMISSIONS: &[EndpointPermission] = &[
    EndpointPermission {
        method: "GET",
        path: "/version",
        check: None,
        inside: "none (user => 'all')",
        source: "pve-manager PVE/API2/Version.pm",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes",
        check: None,
        inside: "none (user => 'all')",
        source: "pve-manager PVE/API2/Nodes.pm",
    },
    EndpointPermission {
        method: "GET",
        path: "/cluster/nextid",
        check: None,
        inside: "none (user => 'all')",
        source: "pve-manager PVE/API2/Cluster.pm nextid",
    },
    EndpointPermission {
        method: "GET",
        path: "/cluster/resources",
        check: None,
        inside: "lists only guests with VM.Audit on /vms/{vmid}, storages with Datastore.Audit|Datastore.AllocateSpace on /storage/{storage}",
        source: "pve-manager PVE/API2/Cluster.pm resources",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/tasks",
        check: None,
        inside: "lists the token's own tasks, or all with Sys.Audit on /nodes/{node}",
        source: "pve-manager PVE/API2/Tasks.pm node_tasks",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/status",
        check: None,
        inside: "Sys.Audit on /nodes/{node} unless the task is the token's",
        source: "pve-manager PVE/API2/Tasks.pm read_task_status",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/log",
        check: None,
        inside: "Sys.Audit on /nodes/{node} unless the task is the token's",
        source: "pve-manager PVE/API2/Tasks.pm read_task_log",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/storage",
        check: None,
        inside: "lists only storages with Datastore.Audit|Datastore.AllocateSpace on /storage/{storage}",
        source: "pve-storage src/PVE/API2/Storage/Status.pm index",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/status",
        check: Some((
            "/storage/{storage}",
            &["Datastore.Audit", "Datastore.AllocateSpace"],
            true,
        )),
        inside: "",
        source: "pve-storage src/PVE/API2/Storage/Status.pm read_status",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/content",
        check: Some((
            "/storage/{storage}",
            &["Datastore.Audit", "Datastore.AllocateSpace"],
            true,
        )),
        inside: "",
        source: "pve-storage src/PVE/API2/Storage/Content.pm index",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/storage/{storage}/upload",
        check: Some(("/storage/{storage}", &["Datastore.AllocateTemplate"], false)),
        inside: "",
        source: "pve-storage src/PVE/API2/Storage/Status.pm upload",
    },
    EndpointPermission {
        method: "DELETE",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        check: None,
        inside: "Datastore.Allocate on /storage/{storage} (backups: Datastore.AllocateSpace and VM.Backup on the owner)",
        source: "pve-storage src/PVE/API2/Storage/Content.pm delete",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/qemu",
        check: None,
        inside: "VM.Allocate on /vms/{vmid}; Datastore.AllocateSpace on /storage/{s} for each new disk and on `storage`; import-from/iso volumes: Datastore.Allocate, or Datastore.AllocateSpace|Datastore.Audit on their storage; per option VM.Config.CPU/Memory/Network/HWType/Options/Disk, Cloudinit|Network for ci*/ipconfig; tags: VM.Config.Options; start=1: VM.PowerMgmt; SDN.Use on /sdn/zones/localnetwork/{bridge} per netN",
        source: "qemu-server src/PVE/API2/Qemu.pm create_vm, $check_storage_access, $check_vm_modify_config_perm; src/PVE/QemuServer.pm check_bridge_access; pve-guest-common src/PVE/GuestHelpers.pm check_vnet_access, assert_tag_permissions; pve-storage src/PVE/Storage.pm check_volume_access",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/config",
        check: Some(("/vms/{vmid}", &["VM.Audit"], false)),
        inside: "",
        source: QEMU,
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/config",
        check: Some(("/vms/{vmid}", VM_CONFIG_QEMU, true)),
        inside: "per option as for create (disks: VM.Config.Disk, cdroms: VM.Config.CDROM, of the old and the new value); Datastore.AllocateSpace for new disks and for freeing unusedN",
        source: "qemu-server src/PVE/API2/Qemu.pm $update_vm_api",
    },
    EndpointPermission {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/config",
        check: Some(("/vms/{vmid}", VM_CONFIG_QEMU, true)),
        inside: "as POST",
        source: "qemu-server src/PVE/API2/Qemu.pm $update_vm_api",
    },
    EndpointPermission {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/resize",
        check: Some(("/vms/{vmid}", &["VM.Config.Disk"], false)),
        inside: "Datastore.AllocateSpace on the disk's storage (in the task)",
        source: "qemu-server src/PVE/API2/Qemu.pm resize_vm",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/start",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "qemu-server src/PVE/API2/Qemu.pm vm_start",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/stop",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "qemu-server src/PVE/API2/Qemu.pm vm_stop",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/shutdown",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "qemu-server src/PVE/API2/Qemu.pm vm_shutdown",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/status/current",
        check: Some(("/vms/{vmid}", &["VM.Audit"], false)),
        inside: "",
        source: "qemu-server src/PVE/API2/Qemu.pm vm_status",
    },
    EndpointPermission {
        method: "DELETE",
        path: "/nodes/{node}/qemu/{vmid}",
        check: Some(("/vms/{vmid}", &["VM.Allocate"], false)),
        inside: "",
        source: "qemu-server src/PVE/API2/Qemu.pm destroy_vm",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/lxc",
        check: None,
        inside: "VM.Allocate on /vms/{vmid}; unprivileged=0: Sys.Modify on /; ostemplate: Datastore.Allocate, or Datastore.AllocateSpace|Datastore.Audit on its storage; Datastore.AllocateSpace on every rootdir storage used; per option VM.Config.CPU/Memory/Network/Disk/Options; features: nesting only (VM.Allocate), others root@pam only; SDN.Use per netN bridge",
        source: LXC,
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/lxc/{vmid}/config",
        check: Some(("/vms/{vmid}", &["VM.Audit"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC/Config.pm vm_config",
    },
    EndpointPermission {
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        check: Some(("/vms/{vmid}", VM_CONFIG_LXC, true)),
        inside: "per option as for create (check_ct_modify_config_perm), for set and deleted keys",
        source: "pve-container src/PVE/API2/LXC/Config.pm update_vm",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/move_volume",
        check: Some(("/vms/{vmid}", &["VM.Config.Disk"], false)),
        inside: "VM.Config.Disk on /vms/{target-vmid}; Datastore.AllocateSpace on the volume's storage",
        source: "pve-container src/PVE/API2/LXC.pm move_volume",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/start",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC/Status.pm vm_start",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/stop",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC/Status.pm vm_stop",
    },
    EndpointPermission {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/shutdown",
        check: Some(("/vms/{vmid}", &["VM.PowerMgmt"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC/Status.pm vm_shutdown",
    },
    EndpointPermission {
        method: "GET",
        path: "/nodes/{node}/lxc/{vmid}/status/current",
        check: Some(("/vms/{vmid}", &["VM.Audit"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC/Status.pm vm_status",
    },
    EndpointPermission {
        method: "DELETE",
        path: "/nodes/{node}/lxc/{vmid}",
        check: Some(("/vms/{vmid}", &["VM.Allocate"], false)),
        inside: "",
        source: "pve-container src/PVE/API2/LXC.pm destroy_vm",
    },
];

/// The entry for a method and path template.
pub(super) fn endpoint(method: &str, template: &str) -> Option<&'static EndpointPermission> {
    PERMISSIONS
        .iter()
        .find(|p| p.method == method && p.path == template)
}

/// `normalize_path` (AccessControl.pm): no doubled or trailing slashes.
fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// Whether the token holds `privilege` on `path`: the deepest listed path
/// that is `path` or above it decides.
fn holds(token: &TokenConfig, path: &str, privilege: &str) -> bool {
    let Some(privileges) = &token.privileges else {
        return true;
    };
    let path = normalize(path);
    let mut best: Option<(usize, &Vec<String>)> = None;
    for (acl_path, granted) in privileges {
        let acl_path = normalize(acl_path);
        let applies =
            acl_path == "/" || path == acl_path || path.starts_with(&format!("{acl_path}/"));
        let depth = acl_path.matches('/').count() - usize::from(acl_path == "/");
        if applies && best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, granted));
        }
    }
    best.is_some_and(|(_, granted)| granted.iter().any(|g| g == privilege))
}

/// `raise_perm_exc`: 403 with "Permission check failed (WHAT)".
pub(super) fn denied(what: &str) -> Reply {
    let message = if what.is_empty() {
        "Permission check failed".to_owned()
    } else {
        format!("Permission check failed ({what})")
    };
    Reply::Error(StatusCode::FORBIDDEN, message)
}

impl Call<'_> {
    fn token(&self) -> Option<&TokenConfig> {
        self.shared.config.tokens.iter().find(|t| t.id == self.user)
    }

    /// Whether the caller holds every one of `privileges` on `path`.
    pub(super) fn has(&self, path: &str, privileges: &[&str]) -> bool {
        self.token()
            .is_some_and(|t| privileges.iter().all(|p| holds(t, path, p)))
    }

    /// `$rpcenv->check`: every privilege, or 403 naming the first missing.
    pub(super) fn check(&self, path: &str, privileges: &[&str]) -> Result<(), Reply> {
        let Some(token) = self.token() else {
            return Err(denied(""));
        };
        match privileges.iter().find(|p| !holds(token, path, p)) {
            Some(missing) => Err(denied(&format!("{}, {missing}", normalize(path)))),
            None => Ok(()),
        }
    }

    /// `$rpcenv->check_any`: one of them, or 403 naming them all.
    pub(super) fn check_any(&self, path: &str, privileges: &[&str]) -> Result<(), Reply> {
        let held = self
            .token()
            .is_some_and(|t| privileges.iter().any(|p| holds(t, path, p)));
        if held {
            Ok(())
        } else {
            Err(denied(&format!(
                "{}, {}",
                normalize(path),
                privileges.join("|")
            )))
        }
    }

    /// `check_vm_perm` without a pool: `/vms/{vmid}`.
    pub(super) fn check_vm(&self, vmid: u32, privileges: &[&str]) -> Result<(), Reply> {
        self.check(&format!("/vms/{vmid}"), privileges)
    }

    /// The schema's `permissions.check` for this endpoint, if it has one.
    pub(super) fn check_schema_permissions(&self, method: &str) -> Result<(), Reply> {
        let Some((template, privileges, any)) =
            endpoint(method, &self.template).and_then(|e| e.check)
        else {
            return Ok(());
        };
        // PVE::Tools::template_replace: `{name}` from the parameters.
        let mut path = template.to_owned();
        for (name, value) in self.path_params.iter().chain(&self.params) {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        if any {
            self.check_any(&path, privileges)
        } else {
            self.check(&path, privileges)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn privileges_read_from_toml() {
        let config = crate::proxmox::sim::SimConfig::from_toml(
            "[[tokens]]\nid = \"kiln@pve!t\"\nsecret = \"s\"\n[tokens.privileges]\n\"/vms\" = [\"VM.Audit\"]\n",
        );
        let token = config.ok().and_then(|c| c.tokens.into_iter().next());
        assert!(
            token.is_some_and(|t| holds(&t, "/vms/7", "VM.Audit") && !holds(&t, "/", "VM.Audit"))
        );
    }

    #[test]
    fn the_deepest_listed_path_decides() {
        let token = TokenConfig {
            id: "kiln@pve!t".into(),
            secret: "s".into(),
            privileges: Some(BTreeMap::from([
                ("/".into(), vec!["Sys.Audit".into()]),
                ("/vms".into(), vec!["VM.Audit".into(), "VM.Allocate".into()]),
                ("/vms/100/".into(), vec!["VM.Audit".into()]),
            ])),
        };
        assert!(holds(&token, "/vms/101", "VM.Allocate"));
        assert!(!holds(&token, "/vms/100", "VM.Allocate"));
        assert!(holds(&token, "/vms/100", "VM.Audit"));
        assert!(!holds(&token, "/vms", "Sys.Audit"));
        assert!(holds(&token, "/storage/local", "Sys.Audit"));
        assert!(!holds(&token, "/vmsx", "VM.Audit"));
    }
}
