//! Faults a test arms, each sprung a fixed number of times.

use regex::Regex;

/// A fault to inject.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The next `count` requests whose API path (without `/api2/json`)
    /// matches `path` answer 503 without reaching the API.
    ServiceUnavailable { path: Regex, count: usize },
    /// The next upload's connection is closed after `after_bytes` bytes of
    /// its body were read; nothing answers it.
    DropUpload { after_bytes: u64 },
    /// The next task of worker type `kind` (`imgcopy`, `imgdel`, ...)
    /// fails with `message` and changes nothing.
    FailTask { kind: String, message: String },
    /// The next task of worker type `kind` stays `running` forever and
    /// changes nothing.
    TaskNeverEnds { kind: String },
}

/// What a started task should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TaskFault {
    Fail(String),
    Hang,
}

#[derive(Debug, Default)]
pub(super) struct Faults {
    armed: Vec<Fault>,
}

impl Faults {
    pub(super) fn arm(&mut self, fault: Fault) {
        self.armed.push(fault);
    }

    pub(super) fn armed(&self) -> Vec<Fault> {
        self.armed.clone()
    }

    /// Springs a 503 for this path, if one is armed.
    pub(super) fn take_unavailable(&mut self, api_path: &str) -> bool {
        let position = self.armed.iter().position(
            |f| matches!(f, Fault::ServiceUnavailable { path, .. } if path.is_match(api_path)),
        );
        let Some(position) = position else {
            return false;
        };
        if let Some(Fault::ServiceUnavailable { count, .. }) = self.armed.get_mut(position) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.armed.remove(position);
            }
        }
        true
    }

    /// The byte count after which to drop the next upload, if armed.
    pub(super) fn take_drop_upload(&mut self) -> Option<u64> {
        let position = self
            .armed
            .iter()
            .position(|f| matches!(f, Fault::DropUpload { .. }))?;
        match self.armed.remove(position) {
            Fault::DropUpload { after_bytes } => Some(after_bytes),
            _ => None,
        }
    }

    /// What the next task of this type should do, if a fault is armed.
    pub(super) fn take_task(&mut self, task_kind: &str) -> Option<TaskFault> {
        let position = self.armed.iter().position(|f| match f {
            Fault::FailTask { kind, .. } | Fault::TaskNeverEnds { kind } => kind == task_kind,
            _ => false,
        })?;
        match self.armed.remove(position) {
            Fault::FailTask { message, .. } => Some(TaskFault::Fail(message)),
            Fault::TaskNeverEnds { .. } => Some(TaskFault::Hang),
            _ => None,
        }
    }
}
