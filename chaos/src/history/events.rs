//! The recorded history: one JSON object per line, appended with a single
//! write(2) on an O_APPEND file by every process, and its parsing.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The scenario starts (orchestrator): `wall`, `ttl_ms`, `note` = scenario name.
    Begin,
    /// A `gcslock run` process is about to be spawned (orchestrator); `t` is taken
    /// before the fork, so every event of that run comes later.
    Spawn,
    /// The critical section starts (recorder child, holding the lock).
    Start,
    /// The critical section commits and ends (recorder child): `commit` says how;
    /// `code`, when present and not 0, is the job's failing exit code.
    End,
    /// The recorder got a signal (gcslock stopping it after losing the lease, or
    /// the orchestrator's wall-time limit) and stops without committing.
    Abort,
    /// The `gcslock run` process exited (orchestrator): `code` or `signal`.
    Exit,
    /// The orchestrator SIGKILLed a holder's process groups: `sent` is when,
    /// `t` when both processes were seen dead.
    Kill,
    /// The orchestrator SIGSTOPped a holder's process groups.
    Stop,
    /// ... and SIGCONTinued them.
    Cont,
    /// A recorder (`pid`) was seen dead after its gcslock exited, section unfinished.
    Dead,
    /// The lock's state after every worker finished (`state`, `note` = status JSON).
    Final,
    /// gcslock exited 76 ("the lease was lost while the command ran") but the
    /// recorder never wrote a start: it was stopped before it could. `pid` is the
    /// process group gcslock says it signalled, `note` its message.
    Unrecorded,
    /// The recorder started a helper process (`pid`) in its own process group: part
    /// of the job, so the section lasts until it is gone too.
    Helper,
    /// The recorder got a stop signal (`signal`) and handles it slowly: it keeps
    /// running for `note` before it aborts.
    Term,
    /// The orchestrator SIGKILLed gcslock alone (`ppid`), not its command's group:
    /// `sent` is when, `t` when gcslock was seen dead.
    Crash,
    /// The orchestrator black-holed a worker's link to storage (its proxy).
    Cut,
    /// ... and restored it.
    Heal,
}

/// A stop event's `state` when the stopped gcslock had not started its command
/// (so it can start it only after being continued).
pub const STOPPED_NO_COMMAND: &str = "no-command";

/// A stop event's `state` when only gcslock was stopped, not its command: the
/// command runs on, and gcslock must stop it at once when continued.
pub const STOPPED_GCSLOCK_ONLY: &str = "gcslock-only";

/// One line of the history. Fields not used by a kind are absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ev: Kind,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub t: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The recorder's pid (start, end, abort, kill, stop, dead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The recorder's parent: the gcslock process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<i32>,
    /// The process group of the spawned `gcslock run` (with faketime, if used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// CLOCK_REALTIME as the process saw it, nanoseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// End: `unfenced`, `fenced-accepted` or `fenced-rejected: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Kill/stop: when the signal was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Final: `free`, `released`, `stale`, `held`, `not-a-lock` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Spawn of a `gcslock run --once-per P`: the slot, floor(unix time / P), of
    /// the wall clock at the spawn (`ttl_ms`-like: `period_s` in `note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// Start: the semaphore place the section holds (`GCSLOCK_PLACE`); absent: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<u32>,
    /// Begin: `gcslock run --holders N` (absent: 1, a lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<u32>,
}

impl Event {
    pub fn new(ev: Kind, t: u64) -> Self {
        Self {
            ev,
            t,
            worker: None,
            attempt: None,
            token: None,
            pid: None,
            ppid: None,
            pgid: None,
            wall: None,
            code: None,
            signal: None,
            commit: None,
            sent: None,
            ttl_ms: None,
            state: None,
            note: None,
            slot: None,
            place: None,
            holders: None,
        }
    }

    pub fn run(mut self, run: RunId) -> Self {
        self.worker = Some(run.worker);
        self.attempt = Some(run.attempt);
        self
    }

    pub fn run_id(&self) -> Option<RunId> {
        Some(RunId {
            worker: self.worker?,
            attempt: self.attempt?,
        })
    }
}

/// The commit outcomes a recorder writes.
pub const COMMIT_UNFENCED: &str = "unfenced";
pub const COMMIT_FENCED_ACCEPTED: &str = "fenced-accepted";
pub const COMMIT_FENCED_REJECTED: &str = "fenced-rejected";

/// One `gcslock run` invocation: worker number and its attempt number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId {
    pub worker: u32,
    pub attempt: u32,
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}#{}", self.worker, self.attempt)
    }
}

/// An append-only history file; each event is one write(2) of one whole line.
#[derive(Debug)]
pub struct Log {
    file: File,
}

impl Log {
    /// Creates (truncates) the history file.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Self::open(path)
    }

    /// Opens an existing history for appending (O_APPEND).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(Self { file })
    }

    pub fn append(&self, event: &Event) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(event).context("cannot encode an event")?;
        line.push('\n');
        // One write(2), never a loop of them: with O_APPEND the line lands whole.
        let written = (&self.file)
            .write(line.as_bytes())
            .context("cannot append to the history")?;
        anyhow::ensure!(
            written == line.len(),
            "short write to the history ({written} of {} bytes)",
            line.len()
        );
        Ok(())
    }
}

/// Reads a history. While writers may still be appending (`live`), an unfinished
/// last line is ignored; otherwise every line that does not parse is returned.
pub fn read(path: &Path, live: bool) -> anyhow::Result<(Vec<Event>, Vec<String>)> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut file| file.read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse(&text, live))
}

pub fn parse(text: &str, live: bool) -> (Vec<Event>, Vec<String>) {
    let complete = if live {
        text.rfind('\n').map_or("", |end| &text[..end])
    } else {
        text
    };
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for line in complete.lines().filter(|line| !line.trim().is_empty()) {
        match serde_json::from_str::<Event>(line) {
            Ok(event) => events.push(event),
            Err(error) => bad.push(format!("{error}: {line}")),
        }
    }
    (events, bad)
}
