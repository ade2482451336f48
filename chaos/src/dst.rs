//! Scenario `once-per-dst`: the daylight-saving changes its ticks straddle, and an
//! oracle for the wall clock of New York around them, written out by hand from the
//! rules (not computed by the zone library gcslock uses), so that the checker
//! judges gcslock's calendar against an independent one.

/// The zone every gcslock of the scenario runs in (`TZ`).
pub const ZONE: &str = "America/New_York";

/// The changes, in order: 2025-03-09 02:00 EST becomes 03:00 EDT (the skipped
/// hour), and 2025-11-02 02:00 EDT becomes 01:00 EST (the repeated hour). In the
/// past, so that completions never lie ahead of the storage server's clock.
pub const CHANGES: [i64; 2] = [1_741_503_600, 1_762_063_200];

/// Where each tick fires, relative to a change: one before it, one after it.
pub const LEADS_S: [i64; 2] = [-8, 2];

/// Ticks in the scenario: one per change and lead.
pub const TICKS: u32 = 4;

const EST: i64 = -5 * 3600;
const EDT: i64 = -4 * 3600;

/// New York's wall clock at `unix` seconds, as seconds since 1970-01-01T00:00 of
/// that wall clock; `None` outside the stretch of 2024-11-03 to 2026-03-08 that
/// the oracle knows.
pub fn new_york_civil(unix: i64) -> Option<u64> {
    const KNOWN: (i64, i64) = (1_730_613_600, 1_772_953_200);
    if !(KNOWN.0..KNOWN.1).contains(&unix) {
        return None;
    }
    let offset = if (CHANGES[0]..CHANGES[1]).contains(&unix) {
        EDT
    } else {
        EST
    };
    u64::try_from(unix + offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_knows_both_changes() {
        let two_hours = 7200;
        let slot = |unix| new_york_civil(unix).map(|civil| civil / two_hours);
        // Spring: 01:59:52 EST and 03:00:02 EDT are in slots 00:00 and 02:00.
        assert_eq!(slot(CHANGES[0] - 8).map(|s| s + 1), slot(CHANGES[0] + 2));
        // Autumn: 01:59:52 EDT and 01:00:02 EST are both in slot 00:00.
        assert_eq!(slot(CHANGES[1] - 8), slot(CHANGES[1] + 2));
        assert_eq!(new_york_civil(0), None);
        assert_eq!(TICKS as usize, CHANGES.len() * LEADS_S.len());
    }
}
