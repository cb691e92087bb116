//! Tasks: UPIDs, `GET /nodes/{node}/tasks/{upid}/status` and `.../log`.
//!
//! The UPID format and parse regex are pve-common `src/PVE/UPID.pm`
//! (`upid_encode`, `upid_decode`); status and log answers follow
//! pve-manager `PVE/API2/Tasks.pm`.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::json;

use super::server::{Call, Reply};

/// `UPID:$node:$pid:$pstart:$starttime:$type:$id:$user:`, the numbers as
/// `%08X` (pid, starttime) and `%08X` (pstart, 8 or 9 digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upid {
    pub(super) node: String,
    pub(super) pid: u32,
    pub(super) pstart: u32,
    pub(super) starttime: u64,
    pub(super) kind: String,
    pub(super) id: String,
    pub(super) user: String,
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.kind, self.id, self.user
        )
    }
}

static UPID_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$",
    )
    .ok()
});

impl Upid {
    /// `upid_decode`; `None` where PVE says "unable to parse worker upid".
    pub(super) fn parse(text: &str) -> Option<Upid> {
        let c = UPID_RE.as_ref()?.captures(text)?;
        let hex = |i: usize| u64::from_str_radix(c.get(i)?.as_str(), 16).ok();
        Some(Upid {
            node: c.get(1)?.as_str().to_owned(),
            pid: u32::try_from(hex(3)?).ok()?,
            pstart: u32::try_from(hex(4)?).ok()?,
            starttime: hex(5)?,
            kind: c.get(6)?.as_str().to_owned(),
            id: c.get(7)?.as_str().to_owned(),
            user: c.get(8)?.as_str().to_owned(),
        })
    }
}

fn lookup(call: &Call<'_>) -> Result<(Upid, super::state::TaskState), Reply> {
    let text = call.path_param("upid");
    let upid = Upid::parse(text)
        .ok_or_else(|| Reply::param_error("upid", "unable to parse worker upid"))?;
    let task = call
        .state()
        .task(text)
        .cloned()
        .ok_or_else(|| Reply::param_error("upid", "no such task"))?;
    Ok((upid, task))
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
pub(super) fn status(call: &Call<'_>) -> Reply {
    let (upid, task) = match lookup(call) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let mut data = json!({
        "upid": task.upid,
        "node": upid.node,
        "pid": upid.pid,
        "pstart": upid.pstart,
        "starttime": upid.starttime,
        "type": upid.kind,
        "id": upid.id,
        "user": upid.user,
        "status": if task.exit.is_some() { "stopped" } else { "running" },
    });
    if let (Some(exit), Some(object)) = (&task.exit, data.as_object_mut()) {
        object.insert("exitstatus".to_owned(), json!(exit));
    }
    Reply::Data(data)
}

/// `GET /nodes/{node}/tasks/{upid}/log`: `[{n, t}]` and `total`;
/// `start` (default 0) and `limit` (default 50) page through it.
pub(super) fn log(call: &Call<'_>) -> Reply {
    let (_, task) = match lookup(call) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let number = |name: &str, default: usize| {
        call.params
            .get(name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let (start, limit) = (number("start", 0), number("limit", 50));
    let lines: Vec<_> = task
        .log
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(n, t)| json!({"n": n + 1, "t": t}))
        .collect();
    Reply::DataWithTotal(json!(lines), task.log.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_round_trips_in_pve_format() {
        let text = "UPID:node01:00003558:071F1869:6857C4E4:imgcopy::caprox1@pve!capi:";
        let upid = Upid::parse(text);
        assert_eq!(
            upid.as_ref().map(ToString::to_string).as_deref(),
            Some(text)
        );
        assert_eq!(Upid::parse("UPID:node01:1:2:3:x::u:"), None);
    }
}
