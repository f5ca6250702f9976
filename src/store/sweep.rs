//! Expired-session deletion as its own contract: [`ClearReport`] (what a pass did) and
//! [`Sweep`] (a pass done in slices, with the store's typed position).

use std::any::Any;
use std::fmt;
use std::time::SystemTime;

use super::error::StoreError;

/// What [`ExpiredDeletion::clear_expired`](crate::ExpiredDeletion::clear_expired) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearReport {
    /// Expired sessions removed.
    pub expired: u64,
    /// Corrupt session files removed.
    pub corrupt: u64,
    /// Leftovers of crashed writes removed.
    pub leftovers: u64,
    /// Live sessions kept.
    pub kept: u64,
    /// Entries left alone: not session files, symlinks, directories, locked, or too young.
    pub skipped: u64,
}

/// Where a pass of [`Sweep`] resumes.
#[derive(Debug, Default)]
#[non_exhaustive]
pub enum SweepCursor {
    /// No pass under way.
    #[default]
    Idle,
    /// A store's own position, of a type of its own (a file store's directory listing, read
    /// so far), which it takes back by downcasting; a store that finds another's starts
    /// its own pass.
    Own(Box<dyn Any + Send>),
    /// A store's position, as text (a `SCAN` cursor, the last key seen).
    Position(String),
}

/// A pass of `clear_expired` done in steps
/// ([`ExpiredDeletion::sweep_step`](crate::ExpiredDeletion::sweep_step)), so that a server
/// can clean up between requests without making any wait more than a few milliseconds.
pub struct Sweep {
    cursor: SweepCursor,
    report: ClearReport,
    scanned: u64,
    now: SystemTime,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep::new()
    }
}

impl fmt::Debug for Sweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sweep")
            .field("in_progress", &self.in_progress())
            .field("scanned", &self.scanned)
            .field("report", &self.report)
            .finish()
    }
}

impl Sweep {
    /// A sweep that has not started.
    pub fn new() -> Self {
        Sweep {
            cursor: SweepCursor::Idle,
            report: ClearReport::default(),
            scanned: 0,
            now: SystemTime::now(),
        }
    }

    /// Starts a new pass at `cursor`, counting from zero, with expiry judged at the time of
    /// this call.
    pub fn begin(&mut self, cursor: SweepCursor) {
        *self = Sweep {
            cursor,
            ..Sweep::new()
        };
    }

    /// Ends the pass (its report stays readable until the next `begin`).
    pub fn finish(&mut self) {
        self.cursor = SweepCursor::Idle;
    }

    /// Whether a pass is under way.
    pub fn in_progress(&self) -> bool {
        !matches!(self.cursor, SweepCursor::Idle)
    }

    /// Where the pass resumes, for the store that runs it.
    pub fn cursor_mut(&mut self) -> &mut SweepCursor {
        &mut self.cursor
    }

    /// What this pass did so far (or did, once complete).
    pub fn report(&self) -> &ClearReport {
        &self.report
    }

    /// The report, for the store that runs the pass to count in.
    pub fn report_mut(&mut self) -> &mut ClearReport {
        &mut self.report
    }

    /// How many entries this pass has looked at.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Counts `n` more entries looked at.
    pub fn count_scanned(&mut self, n: u64) {
        self.scanned += n;
    }

    /// The time the pass judges expiry by: when it began.
    pub fn now(&self) -> SystemTime {
        self.now
    }
}

/// A whole pass: `step` (a slice) until it says the pass is complete, `progress` after each.
pub(crate) fn whole_pass(
    mut step: impl FnMut(&mut Sweep) -> Result<bool, StoreError>,
    progress: &mut dyn FnMut(&Sweep),
) -> Result<ClearReport, StoreError> {
    let mut sweep = Sweep::new();
    loop {
        let done = step(&mut sweep)?;
        progress(&sweep);
        if done {
            return Ok(sweep.report().clone());
        }
    }
}
