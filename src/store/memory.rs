//! MemoryStore: sessions in a map, for tests and examples.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{
    ChangeSet, ClearReport, ExpiredDeletion, Loaded, Record, SessionLock, SessionStore, StoreError,
};
use crate::key::SessionKey;

/// Sessions kept in memory by one process, lost when it exits. Every operation runs under one
/// mutex, so saves apply their changes atomically as the file store's do.
///
/// ```
/// use std::sync::Arc;
/// use filesession::{MemoryStore, Session, SessionConfig};
///
/// let store = Arc::new(MemoryStore::new());
/// let mut session = Session::new(store.clone(), None, SessionConfig::default());
/// session.insert("visits", 1);
/// session.save()?;
/// assert_eq!(store.len(), 1);
/// # Ok::<(), filesession::StoreError>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<SessionKey, Record>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// How many sessions it holds, expired ones included.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether it holds no session.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Stores `record` under a fresh key.
    pub(crate) fn insert(&self, record: Record) -> SessionKey {
        Self::insert_new(&mut self.map(), record)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<SessionKey, Record>> {
        crate::store::locked(&self.sessions)
    }

    fn insert_new(map: &mut HashMap<SessionKey, Record>, record: Record) -> SessionKey {
        loop {
            let key = SessionKey::generate();
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
                slot.insert(record);
                return key;
            }
        }
    }
}

impl SessionStore for MemoryStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        let now = SystemTime::now();
        Ok(self
            .map()
            .get(key)
            .filter(|r| !r.is_expired(now))
            .map(|r| Loaded {
                record: r.clone(),
                lock: None,
            }))
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        Ok(Self::insert_new(&mut self.map(), record.clone()))
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        _lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        let mut map = self.map();
        let record = map.get_mut(key).ok_or(StoreError::Deleted(*key))?;
        changes.apply_to(record, SystemTime::now());
        Ok(record.clone())
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        _lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        let mut map = self.map();
        let mut record = map.remove(key).ok_or(StoreError::Deleted(*key))?;
        changes.apply_to(&mut record, SystemTime::now());
        let new_key = Self::insert_new(&mut map, record.clone());
        Ok((new_key, record))
    }

    fn delete(&self, key: &SessionKey, _lock: Option<SessionLock>) -> Result<(), StoreError> {
        self.map().remove(key);
        Ok(())
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        Ok(self.map().contains_key(key))
    }

    /// Memory: nothing to wait for.
    fn loads_wait(&self) -> bool {
        false
    }

    /// Memory: nothing to wait for.
    fn saves_wait(&self) -> bool {
        false
    }

    fn expired_deletion(&self) -> Option<&dyn ExpiredDeletion> {
        Some(self)
    }
}

impl ExpiredDeletion for MemoryStore {
    fn clear_expired(&self) -> Result<ClearReport, StoreError> {
        let now = SystemTime::now();
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, r| !r.is_expired(now));
        Ok(ClearReport {
            expired: (before - map.len()) as u64,
            kept: map.len() as u64,
            ..ClearReport::default()
        })
    }
}
