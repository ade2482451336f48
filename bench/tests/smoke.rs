//! Runs `gcslock-bench --smoke`: every measurement path with tiny counts, against
//! its own emulator. It asserts request counts only (inside the benchmark), never
//! timings.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn smoke_mode_runs_every_measurement_and_its_count_checks_pass() {
    let bench = Path::new(env!("CARGO_BIN_EXE_gcslock-bench"));
    let mut command = Command::new(bench);
    command.arg("--smoke");
    // `cargo test --workspace` builds the gcslock binary beside ours (the gcslock
    // package's own tests need it). A nested cargo build would wait forever on the
    // build-directory lock this test run holds, so never build here.
    match bench.parent().map(|dir| dir.join("gcslock")) {
        Some(gcslock) if gcslock.is_file() => {
            command.arg("--gcslock-bin").arg(gcslock);
        }
        _ => {
            eprintln!("gcslock binary not built beside the benchmark; CLI overhead skipped");
            command.arg("--skip-cli");
        }
    }
    let started = Instant::now();
    let output = command.output().expect("run gcslock-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "gcslock-bench --smoke failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    assert!(stdout.contains("| # | measurement |"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    eprintln!(
        "smoke run took {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}
