//! Task ids (UPIDs), as pve-common `src/PVE/UPID.pm` writes and parses them:
//! `UPID:NODE:PID(8 hex):PSTART(8-9 hex):STARTTIME(8 hex):TYPE:ID:USER:`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: u32,
    /// The worker type (`imgcopy`, `qmcreate`, `vzcreate`, …).
    pub kind: String,
    /// May be empty (`imgcopy` has none).
    pub id: String,
    /// The user or token that started it.
    pub user: String,
    text: String,
}

impl Upid {
    /// Parse as `PVE::UPID::parse_upid` does (its regex, anchored, with the
    /// trailing colon).
    pub fn parse(text: &str) -> Option<Upid> {
        let rest = text.strip_prefix("UPID:")?.strip_suffix(':')?;
        let fields: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, kind, id, user] = fields.as_slice() else {
            return None;
        };
        let hex = |s: &str, lens: &[usize]| {
            (lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let node_ok = !node.is_empty()
            && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !node.starts_with('-')
            && !node.ends_with('-');
        let plain = |s: &str| !s.chars().any(|c| c.is_whitespace() || c == '/');
        if !node_ok
            || kind.is_empty()
            || user.is_empty()
            || !plain(kind)
            || !plain(id)
            || !plain(user)
        {
            return None;
        }
        Some(Upid {
            node: (*node).to_owned(),
            pid: u32::try_from(hex(pid, &[8])?).ok()?,
            pstart: hex(pstart, &[8, 9])?,
            starttime: u32::try_from(hex(starttime, &[8])?).ok()?,
            kind: (*kind).to_owned(),
            id: (*id).to_owned(),
            user: (*user).to_owned(),
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a stopped task's `exitstatus` means success
/// (`PVE::UPID::status_is_error` is false for `OK` and `WARNINGS: n`).
pub fn status_is_ok(exitstatus: &str) -> bool {
    exitstatus == "OK" || exitstatus.starts_with("WARNINGS: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_upids() {
        let upid = Upid::parse("UPID:node01:00003558:071F1869:6857C4E4:imgcopy::caprox1@pve!capi:")
            .unwrap();
        assert_eq!(upid.node, "node01");
        assert_eq!(upid.pid, 0x3558);
        assert_eq!(upid.kind, "imgcopy");
        assert_eq!(upid.id, "");
        assert_eq!(upid.user, "caprox1@pve!capi");
        let upid =
            Upid::parse("UPID:pve:000A1B2C:1071F1869:6857C4E4:qmcreate:100:root@pam:").unwrap();
        assert_eq!(upid.pstart, 0x1071F1869);
        assert_eq!(upid.id, "100");
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "UPID:node01:00003558:071F1869:6857C4E4:imgcopy::user", // no trailing colon
            "UPID:-node:00003558:071F1869:6857C4E4:imgcopy::u:",
            "UPID:node:3558:071F1869:6857C4E4:imgcopy::u:",
            "UPID:node:00003558:071F1869:6857C4E4:img copy::u:",
            "node:00003558:071F1869:6857C4E4:imgcopy::u:",
            "UPID:node:00003558:071F1869:6857C4E4:imgcopy:a/b:u:",
        ] {
            assert!(Upid::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn task_status() {
        assert!(status_is_ok("OK"));
        assert!(status_is_ok("WARNINGS: 2"));
        assert!(!status_is_ok("unexpected status"));
        assert!(!status_is_ok("command 'qemu-img' failed"));
    }
}
