//! What a store keeps ([`Record`]), what one request changed ([`ChangeSet`]), and the
//! skip-write policy every store may use ([`ChangeSet::merge_into`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::expiry::Expiry;

/// The data of one session as stored: the dictionary, the expiry rule and the absolute time
/// the session ends.
///
/// The dictionary is shared (`Arc`): a store that keeps a copy (the memory store, the file
/// store's last decoded document) hands out the same one, and whoever changes it first copies
/// it then (`Arc::make_mut`). Build one from a map with `map.into()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The session dictionary.
    pub data: Arc<Map<String, Value>>,
    /// The expiry rule set by `Session::set_expiry`.
    pub expiry: Expiry,
    /// When the session ends; a load at or after this time finds no session.
    pub expires_at: SystemTime,
}

impl Record {
    /// Whether the session has ended at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

/// What one request changed in a session: the unit a save applies on top of the newest
/// stored copy, so that concurrent requests changing different keys both keep their change.
///
/// For one key the last change wins; [`clear`](ChangeSet::clear) (Django's `clear` and
/// `flush`) wipes what was stored before. The fields are private so that a key is never
/// both written and removed.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use filesession::{ChangeSet, Expiry, Record};
///
/// let mut changes = ChangeSet::new(Duration::from_secs(60));
/// changes.set("a", 1.into());
/// changes.remove("b");
/// let mut stored = Record {
///     data: serde_json::json!({"b": 2, "c": 3}).as_object().cloned().unwrap_or_default().into(),
///     expiry: Expiry::Default,
///     expires_at: SystemTime::UNIX_EPOCH,
/// };
/// changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
/// assert_eq!(serde_json::to_value(&*stored.data)?, serde_json::json!({"c": 3, "a": 1}));
/// assert_eq!(stored.expires_at, SystemTime::UNIX_EPOCH + Duration::from_secs(60));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    cleared: bool,
    writes: Map<String, Value>,
    removals: Vec<String>,
    expiry: Option<Expiry>,
    cookie_age: Duration,
}

impl ChangeSet {
    /// A change set with nothing in it yet; `cookie_age` is `SESSION_COOKIE_AGE`, which
    /// turns the default expiry rule into an absolute time at save.
    pub fn new(cookie_age: Duration) -> Self {
        ChangeSet {
            cookie_age,
            ..ChangeSet::default()
        }
    }

    /// Records `data[key] = value`.
    pub fn set(&mut self, key: &str, value: Value) {
        self.removals.retain(|k| k != key);
        self.writes.insert(key.to_owned(), value);
    }

    /// Records `del data[key]`.
    pub fn remove(&mut self, key: &str) {
        self.writes.remove(key);
        if !self.removals.iter().any(|k| k == key) {
            self.removals.push(key.to_owned());
        }
    }

    /// Records `data.clear()`: everything stored before is dropped.
    pub fn clear(&mut self) {
        self.cleared = true;
        self.writes.clear();
        self.removals.clear();
    }

    /// Records `set_expiry(expiry)`.
    pub fn set_expiry(&mut self, expiry: Expiry) {
        self.expiry = Some(expiry);
    }

    /// Whether the stored dictionary is wiped before the writes are applied.
    pub fn cleared(&self) -> bool {
        self.cleared
    }

    /// Keys set, each with its last value, in the order first set.
    pub fn writes(&self) -> &Map<String, Value> {
        &self.writes
    }

    /// Keys removed (kept apart from the writes because JSON `null` is a value); never a
    /// key that is also in [`writes`](ChangeSet::writes).
    pub fn removals(&self) -> &[String] {
        &self.removals
    }

    /// The expiry rule, if this request set one.
    pub fn expiry(&self) -> Option<Expiry> {
        self.expiry
    }

    /// `SESSION_COOKIE_AGE`, the lifetime of a session with the default expiry.
    pub fn cookie_age(&self) -> Duration {
        self.cookie_age
    }

    /// Applies the changes to `record` (the newest stored copy, or an empty one), and sets its
    /// absolute expiry for a save at `now`.
    pub fn apply_to(&self, record: &mut Record, now: SystemTime) {
        if self.cleared {
            // Not the stored map copied and emptied: a new one.
            record.data = Arc::default();
        }
        if !self.removals.is_empty() || !self.writes.is_empty() {
            let data = Arc::make_mut(&mut record.data);
            for key in &self.removals {
                data.remove(key);
            }
            for (key, value) in &self.writes {
                data.insert(key.clone(), value.clone());
            }
        }
        if let Some(expiry) = self.expiry {
            record.expiry = expiry;
        }
        record.expires_at = record.expiry.date(now, self.cookie_age);
    }

    /// Whether applying the changes to `stored` would change its data or expiry rule.
    /// Compares only the keys this request touched.
    pub fn alters(&self, stored: &Record) -> bool {
        (self.cleared && !stored.data.is_empty())
            || self.expiry.is_some_and(|e| e != stored.expiry)
            || self.removals.iter().any(|k| stored.data.contains_key(k))
            || self
                .writes
                .iter()
                .any(|(k, v)| stored.data.get(k) != Some(v))
    }

    /// A new record holding only these changes, as a save at `now` would write it.
    pub fn to_new_record(&self, now: SystemTime) -> Record {
        let mut record = Record {
            data: Arc::default(),
            expiry: Expiry::Default,
            expires_at: now,
        };
        self.apply_to(&mut record, now);
        record
    }

    /// What a save at `now` stores, given the newest stored copy (`None`: nothing readable
    /// is stored, and the changes alone are written). The skip-write policy, as PHP's
    /// `lazy_write`: when the changes alter nothing and would only move the expiry by less
    /// than 1% of the session's lifetime (at most [`REFRESH_SLACK`]), the stored copy is
    /// [`Merged::Unchanged`] and a store need not write it.
    pub fn merge_into(&self, stored: Option<Record>, now: SystemTime) -> Merged {
        match stored {
            Some(stored)
                if !self.alters(&stored)
                    && expiry_moved_little(
                        &stored,
                        stored.expiry.date(now, self.cookie_age),
                        self.cookie_age,
                        now,
                    ) =>
            {
                Merged::Unchanged(stored)
            }
            Some(mut record) => {
                self.apply_to(&mut record, now);
                Merged::Changed(record)
            }
            None => Merged::Changed(self.to_new_record(now)),
        }
    }
}

/// The most a skipped refresh lets the stored expiry lag behind the cookie's: 60 seconds.
pub const REFRESH_SLACK: Duration = Duration::from_secs(60);

/// What [`ChangeSet::merge_into`] decided a save stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// The data and the expiry rule as stored: only the expiry would move, a little. The
    /// save may skip the write.
    Unchanged(Record),
    /// A new copy to write.
    Changed(Record),
}

impl Merged {
    /// The record, written or not.
    pub fn into_record(self) -> Record {
        match self {
            Merged::Unchanged(record) | Merged::Changed(record) => record,
        }
    }
}

/// Whether moving `stored`'s expiry to `new_expires_at` is a move by less than 1% of the
/// session's lifetime, and at most [`REFRESH_SLACK`].
fn expiry_moved_little(
    stored: &Record,
    new_expires_at: SystemTime,
    cookie_age: Duration,
    now: SystemTime,
) -> bool {
    let lifetime =
        new_expires_at
            .duration_since(now)
            .unwrap_or_default()
            .max(match stored.expiry {
                Expiry::Seconds(n) => Duration::from_secs(n),
                _ => cookie_age,
            });
    let slack = (lifetime / 100).min(REFRESH_SLACK);
    let moved = new_expires_at
        .duration_since(stored.expires_at)
        .unwrap_or_else(|e| e.duration());
    moved < slack
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(data: Value) -> Record {
        Record {
            data: data.as_object().cloned().unwrap_or_default().into(),
            expiry: Expiry::Default,
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn changes_apply_on_top_of_other_keys() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("a", json!(1));
        changes.remove("gone");
        let mut stored = record(json!({"b": 2, "gone": 3}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(
            Value::Object(Arc::unwrap_or_clone(stored.data)),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(
            stored.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(60)
        );
    }

    #[test]
    fn last_change_to_a_key_wins() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("a", json!(1));
        changes.remove("a");
        changes.set("b", json!(1));
        changes.remove("b");
        changes.set("b", json!(2));
        assert!(changes.writes().contains_key("b") && !changes.writes().contains_key("a"));
        assert_eq!(changes.removals(), ["a"]);
        let mut stored = record(json!({"a": 0}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(
            Value::Object(Arc::unwrap_or_clone(stored.data)),
            json!({"b": 2})
        );
    }

    #[test]
    fn alters_tells_a_real_change_from_a_rewrite_of_the_same_values() {
        let stored = record(json!({"a": 1, "b": 2}));
        let mut same = ChangeSet::new(Duration::from_secs(60));
        same.set("a", json!(1));
        same.remove("absent");
        assert!(!same.alters(&stored));
        let mut changed = same.clone();
        changed.set("b", json!(3));
        assert!(changed.alters(&stored));
        let mut removed = ChangeSet::new(Duration::from_secs(60));
        removed.remove("a");
        assert!(removed.alters(&stored));
        let mut cleared = ChangeSet::new(Duration::from_secs(60));
        cleared.clear();
        assert!(cleared.alters(&stored));
        assert!(!cleared.alters(&record(json!({}))));
        let mut expiry = ChangeSet::new(Duration::from_secs(60));
        expiry.set_expiry(Expiry::Seconds(5));
        assert!(expiry.alters(&stored));
    }

    #[test]
    fn clear_drops_what_was_stored_but_keeps_later_writes() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("old", json!(1));
        changes.clear();
        changes.set("new", json!(2));
        let mut stored = record(json!({"other": 3}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(
            Value::Object(Arc::unwrap_or_clone(stored.data)),
            json!({"new": 2})
        );
    }

    #[test]
    fn a_refresh_is_written_once_the_expiry_moved_more_than_the_slack() {
        let now = SystemTime::now();
        let stored = Record {
            data: Default::default(),
            expiry: Expiry::Default,
            expires_at: now,
        };
        let age = Duration::from_secs(1_209_600);
        let moved =
            |s: &Record, secs| expiry_moved_little(s, now + Duration::from_secs(secs), age, now);
        assert!(moved(&stored, 59));
        assert!(!moved(&stored, 61));
        // A short session: 1% of 10 s.
        let short = Record {
            expiry: Expiry::Seconds(10),
            ..stored.clone()
        };
        assert!(!moved(&short, 1));
    }

    #[test]
    fn merge_skips_a_save_that_only_moves_the_expiry_a_little() {
        let now = SystemTime::now();
        let age = Duration::from_secs(1_209_600);
        let stored = Record {
            data: json!({"a": 1})
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into(),
            expiry: Expiry::Default,
            expires_at: now + age - Duration::from_secs(30),
        };
        let mut same = ChangeSet::new(age);
        same.set("a", json!(1));
        assert_eq!(
            same.merge_into(Some(stored.clone()), now),
            Merged::Unchanged(stored.clone())
        );
        let mut changed = ChangeSet::new(age);
        changed.set("a", json!(2));
        let Merged::Changed(written) = changed.merge_into(Some(stored.clone()), now) else {
            panic!("a changed value must be written");
        };
        assert_eq!(written.data.get("a"), Some(&json!(2)));
        // A refreshed expiry, to the second.
        let lag = (now + age)
            .duration_since(written.expires_at)
            .unwrap_or_default();
        assert!(lag < Duration::from_secs(1), "{lag:?}");
        let Merged::Changed(fresh) = changed.merge_into(None, now) else {
            panic!("nothing stored: the changes are written");
        };
        assert_eq!(
            Value::Object(Arc::unwrap_or_clone(fresh.data)),
            json!({"a": 2})
        );
    }
}
