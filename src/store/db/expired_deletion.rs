//! Deleting a database's expired sessions: `clearsessions` all at once, in batches by the
//! `expire_date` index, and the server's cleanup a slice at a time between requests.

use std::time::{Duration, Instant, SystemTime};

use super::DbStore;
use crate::expiry::later;
use crate::store::{ClearReport, ExpiredDeletion, StoreError, Sweep, SweepCursor};

/// Expired rows deleted per statement.
const DELETE_BATCH: u32 = 1000;
/// Expired rows deleted per cleanup slice between requests.
const SLICE_BATCH: u32 = 200;

impl ExpiredDeletion for DbStore {
    fn clear_expired(&self) -> Result<ClearReport, StoreError> {
        let now = SystemTime::now();
        let mut report = ClearReport::default();
        loop {
            let deleted = self.db.delete_expired(now, DELETE_BATCH)?;
            report.expired += deleted;
            if deleted < u64::from(DELETE_BATCH) {
                break;
            }
        }
        report.kept = self.db.count_live(now)?;
        Ok(report)
    }

    fn sweep_step(&self, sweep: &mut Sweep, budget: Duration) -> Result<bool, StoreError> {
        let deadline = later(Instant::now(), budget);
        if !sweep.in_progress() {
            sweep.begin(SweepCursor::Position(String::new()));
        }
        loop {
            let deleted = match self.db.delete_expired(sweep.now(), SLICE_BATCH) {
                Ok(n) => n,
                Err(e) => {
                    sweep.finish();
                    return Err(e);
                }
            };
            sweep.report_mut().expired += deleted;
            sweep.count_scanned(deleted);
            if deleted < u64::from(SLICE_BATCH) {
                let kept = self.db.count_live(sweep.now());
                sweep.finish();
                sweep.report_mut().kept = kept?;
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}
