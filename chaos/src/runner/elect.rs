//! Scenario `elect`: workers that each keep one `gcslock elect` candidate
//! running (started again whenever it exits), the rotation of faults the chaos
//! thread deals them, and the graceful stop of every candidate at the end.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::{finish, launch, nap, worker_stderr, Action, Job, Shared};
use crate::clock::mono_ns;
use crate::history::{Event, Kind, RunId};
use crate::procs::signal_group;
use crate::scenario::Chaos;

/// Worker `w`: one candidate at a time, each a run (`attempt`); the candidate
/// runs many terms and is started again after a fault ends it. Worker 2's
/// command fails (exit 3): a term ends by the command's exit, whatever its code.
pub(super) fn worker(shared: &Shared<'_>, w: u32, seed: u64) -> anyhow::Result<()> {
    let scenario = shared.scenario;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(w)));
    let stderr = worker_stderr(shared, w)?;
    for attempt in 0..scenario.iterations {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let run = RunId { worker: w, attempt };
        let job = Job {
            hold_ms: rng.random_range(scenario.hold_ms.0..=scenario.hold_ms.1),
            exit_code: if w == 2 { 3 } else { 0 },
        };
        // `elect` has no --wait; the argument is not used.
        let Some(launched) = launch(shared, run, job, "0", &stderr)? else {
            break;
        };
        finish(shared, run, launched)?;
    }
    Ok(())
}

/// The faults of scenario `elect`, in turn from `first`: a crashed machine (the
/// candidate and its command SIGKILLed), gcslock alone SIGKILLed, a partition
/// from storage, a graceful stop. `None` for other scenarios.
pub(super) fn fault_rotation(chaos: &Chaos, first: usize) -> Option<Vec<Action>> {
    let Chaos::Election { cut_ms, .. } = *chaos else {
        return None;
    };
    let mut list = vec![
        Action::Kill,
        Action::Crash,
        Action::Cut { cut_ms },
        Action::Graceful,
    ];
    let len = list.len();
    list.rotate_left(first % len);
    Some(list)
}

/// After the last fault and `settle_ms` more: no candidate is started again,
/// and every running one is stopped gracefully (SIGTERM: it stops its command,
/// resigns and exits), so that the lock is released, not left to expire.
pub(super) fn stop_candidates(shared: &Shared<'_>, settle_ms: u64) -> anyhow::Result<()> {
    nap(shared, Duration::from_millis(settle_ms));
    let running = {
        let running = shared.running();
        shared.stop.store(true, Ordering::SeqCst);
        running
            .iter()
            .map(|(&worker, r)| (worker, *r))
            .collect::<Vec<_>>()
    };
    for (worker, candidate) in running {
        let sent = mono_ns()?;
        signal_group(candidate.pgid, Signal::SIGTERM);
        let mut event = Event::new(Kind::Graceful, sent).run(RunId {
            worker,
            attempt: candidate.attempt,
        });
        event.pgid = Some(candidate.pgid);
        event.sent = Some(sent);
        event.note = Some("end of the scenario".into());
        shared.log.append(&event)?;
    }
    Ok(())
}
