//! The session's dictionary is shared with the store's copy until it changes: loading and
//! reading a session, and clearing it, copy nothing (a counting allocator, per thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use filesession::{MemoryStore, Session, SessionConfig, SessionStore};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the count is a
// thread-local `Cell` of a const initializer, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the pointer came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes allocated on this thread while `f` runs.
fn allocated_by(f: impl FnOnce()) -> usize {
    let before = ALLOCATED.with(Cell::get);
    f();
    ALLOCATED.with(Cell::get) - before
}

/// A stored session of 20,000 keys (about 4 MB as a map), and its key.
fn big_session(store: &Arc<dyn SessionStore>) -> filesession::SessionKey {
    let mut session = Session::new(store.clone(), None, SessionConfig::default());
    for i in 0..20_000 {
        session.insert(format!("key{i}"), "x".repeat(40));
    }
    session.save().unwrap();
    *session.session_key().unwrap()
}

#[test]
fn loading_reading_and_clearing_a_session_copy_nothing_of_its_data() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let key = big_session(&store);
    let mut session = Session::new(store.clone(), Some(key), SessionConfig::default());
    let loaded = allocated_by(|| assert_eq!(session.len(), 20_000));
    assert!(loaded < 10_000, "the load allocated {loaded} bytes");
    let read = allocated_by(|| assert_eq!(session.get("key7"), Some(&"x".repeat(40).into())));
    assert!(read < 10_000, "a read allocated {read} bytes");
    let cleared = allocated_by(|| session.clear());
    assert!(cleared < 10_000, "clear allocated {cleared} bytes");
    // The first change copies the dictionary, once; the store's copy is untouched.
    let mut other = Session::new(store.clone(), Some(key), SessionConfig::default());
    let changed = allocated_by(|| other.insert("key7", "y"));
    assert!(
        changed > 1_000_000,
        "the first change copied only {changed} bytes"
    );
    let again = allocated_by(|| other.insert("key8", "y"));
    assert!(again < 10_000, "the second change allocated {again} bytes");
    let fresh = Session::new(store.clone(), Some(key), SessionConfig::default());
    assert_eq!(fresh.get("key7"), Some(&"x".repeat(40).into()));
    assert_eq!(fresh.len(), 20_000);
}
