//! What the service knows of a job: the row it claimed ([`Job`]) and the
//! identity of one run of it ([`Run`]).
//!
//! A row can run several times (retries, a manual re-run); each claim gives
//! it a new lease, the fencing token every later write of that run names.
//! So a run is `(id, lease)`, and that pair, as a [`Run`], is what every
//! thread passes around: the starter, the finisher, the registry of running
//! tasks, the canceller and the watcher.

use std::fmt;

/// Status values, spelled as the original service spelled them. Compared
/// exactly: the schema gives `status` a binary collation, so a client's own
/// `queued!` is not the service's `QUEUED!`.
pub mod status {
    /// Claimed by a replica, waiting in its channel.
    pub const QUEUED: &str = "QUEUED!";
    /// Its task is running.
    pub const STARTED: &str = "STARTED!";
    /// Task finished (final).
    pub const DONE: &str = "DONE!";
    /// Dead and cancelled (final).
    pub const CANCELLED: &str = "CANCELLED!";
    /// Cannot run: bad input or task error (final).
    pub const FAILED: &str = "FAILED!";
    /// Every status the service knows; `stats` counts any other separately.
    pub const KNOWN: [&str; 5] = [QUEUED, STARTED, DONE, CANCELLED, FAILED];
    /// The final statuses: nothing changes such a row again.
    pub const FINAL: [&str; 3] = [DONE, CANCELLED, FAILED];
}

/// One run of a job: its row and the lease its claim holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Run {
    /// The row's primary key.
    pub id: u64,
    /// The fencing token of this claim.
    pub lease: u64,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} (lease {})", self.id, self.lease)
    }
}

/// A job claimed by this replica: its row, as the claim read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    /// Primary key.
    pub id: u64,
    /// The fencing token this claim holds.
    pub lease: u64,
    /// What the job works on (opaque to the service).
    pub object_id: Option<i64>,
    /// Task duration in nanoseconds; `None` never finishes by itself.
    pub sleep: Option<i64>,
    /// Which registered task runs it.
    pub kind: String,
    /// The queue it waited in.
    pub queue: String,
    /// The task's input (JSON text), if any.
    pub payload: Option<String>,
    /// Attempts started before this claim.
    pub attempts: u32,
    /// Attempts allowed; `None`: the service's `MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
    /// Milliseconds a run may take; `None`: the service's `JOB_TIMEOUT`.
    pub timeout_ms: Option<u64>,
    /// Its priority (claims take higher first).
    pub priority: i32,
}

impl Job {
    /// This claim's run.
    pub fn run(&self) -> Run {
        Run {
            id: self.id,
            lease: self.lease,
        }
    }
}
