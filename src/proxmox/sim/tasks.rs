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
    if !is_own(&task.user, &call.user) {
        call.check(
            &format!("/nodes/{}", call.path_param("node")),
            &["Sys.Audit"],
        )?;
    }
    Ok((upid, task))
}

/// Tasks.pm `$check_task_user`: a token sees its own tasks, a user its
/// own and its tokens'.
fn is_own(task_user: &str, caller: &str) -> bool {
    match task_user.split_once('!') {
        Some((user, _)) => caller == task_user || caller == user,
        None => caller == task_user,
    }
}

/// `GET /nodes/{node}/tasks` (Tasks.pm `node_tasks`): newest first,
/// finished tasks (`source=archive`, the default), running ones
/// (`active`) or both (`all`, running first); a token's own tasks unless
/// it has Sys.Audit on the node; `total` counts every match.
pub(super) fn list(call: &Call<'_>) -> Reply {
    let node = call.path_param("node");
    let param = |name: &str| call.params.get(name).map(String::as_str);
    let number = |name: &str| param(name).and_then(|v| v.parse::<u64>().ok());
    let auditor = call.has(&format!("/nodes/{node}"), &["Sys.Audit"]);
    let source = param("source").unwrap_or("archive");
    let errors = param("errors").is_some_and(|v| v == "1");
    let status_filter: Option<Vec<String>> = if errors {
        Some(vec!["warning".into(), "error".into(), "unknown".into()])
    } else {
        param("statusfilter").map(|f| {
            f.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_lowercase)
                .collect()
        })
    };
    let mut tasks: Vec<(Upid, super::state::TaskState)> = call
        .state()
        .tasks()
        .into_values()
        .filter(|t| t.node == node)
        .filter_map(|t| Some((Upid::parse(&t.upid)?, t)))
        .collect();
    tasks.sort_by_key(|(upid, _)| std::cmp::Reverse((upid.starttime, upid.pid)));
    let (running, finished): (Vec<_>, Vec<_>) =
        tasks.into_iter().partition(|(_, t)| t.exit.is_none());
    let mut candidates = Vec::new();
    if source == "active" || source == "all" {
        candidates.extend(running);
    }
    if source != "active" {
        candidates.extend(finished);
    }
    let start = number("start").unwrap_or(0);
    let limit = number("limit").unwrap_or(50);
    let mut count = 0;
    let mut items = Vec::new();
    for (upid, task) in candidates {
        let keep = param("userfilter")
            .is_none_or(|f| task.user.to_lowercase().contains(&f.to_lowercase()))
            && (auditor || is_own(&task.user, &call.user))
            && param("typefilter").is_none_or(|f| f == upid.kind)
            && param("vmid").is_none_or(|v| v == upid.id)
            && number("since").is_none_or(|s| upid.starttime >= s)
            && number("until").is_none_or(|u| upid.starttime <= u)
            && status_filter
                .as_ref()
                .is_none_or(|f| f.iter().any(|s| *s == status_type(task.exit.as_deref())));
        if !keep {
            continue;
        }
        count += 1;
        if count <= start || items.len() as u64 >= limit {
            continue;
        }
        let (user, token) = match upid.user.split_once('!') {
            Some((user, token)) => (user.to_owned(), Some(token.to_owned())),
            None => (upid.user.clone(), None),
        };
        let mut item = json!({
            "upid": task.upid, "node": upid.node, "pid": upid.pid, "pstart": upid.pstart,
            "starttime": upid.starttime, "type": upid.kind, "id": upid.id, "user": user,
            "status": task.exit.clone().unwrap_or_else(|| "RUNNING".to_owned()),
        });
        if let Some(object) = item.as_object_mut() {
            if let Some(token) = token {
                object.insert("tokenid".into(), json!(token));
            }
            if let Some(endtime) = task.endtime {
                object.insert("endtime".into(), json!(endtime));
            }
        }
        items.push(item);
    }
    Reply::DataWithTotal(json!(items), count as usize)
}

/// pve-common `src/PVE/UPID.pm` `normalize_status_type`.
fn status_type(exit: Option<&str>) -> &'static str {
    match exit {
        None | Some("") | Some("unexpected status") => "unknown",
        Some("OK") => "ok",
        Some(w) if w.starts_with("WARNINGS: ") => "warning",
        Some(_) => "error",
    }
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
