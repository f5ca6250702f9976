//! The cache of `cached_db` ([`CachedDbStore`](crate::store::cached_db::CachedDbStore)):
//! session documents in Redis, in front of the database, kept so that no read is ever served
//! an older copy than the database holds.
//!
//! Three keys per session, under the store's prefix:
//! `cache:<key>` (the document, our own format, with a TTL), `cache-gen:<key>` (a random
//! token, replaced by a new one at every write) and `cache-busy:<key>` (how many writes are
//! under way, with a TTL). A write puts a new token, drops the document and counts itself
//! busy *before* it writes the database, and does it all again (counting itself done)
//! after. A read that misses notes the token (making one if there is none), reads the
//! database, and puts the document in the cache only if the token is still there and the
//! one it noted, and no write is under way (one Lua script). Tokens are 122 random bits, so
//! a token that vanished (its TTL, a Redis restart, an eviction) is never matched again by
//! chance. So a copy read before a write can never land after it, even when the write's
//! second step fails (Redis gone at that instant): the busy count then stays until its TTL,
//! and every read goes to the database meanwhile. A write whose first step fails writes
//! nothing (the request answers 503): the database is never changed behind a cache that
//! could not be told. While Redis does not answer, reads go to the database at once for a
//! second (not waiting for a connection each time), then try the cache again.

use std::sync::LazyLock;

use redis::Script;

use super::connection::Shared;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::fields::epoch_ms;
use crate::key::SessionKey;
use crate::store::StoreError;

/// How long a write counts as under way at least, if it never says it is done (its process
/// died, or Redis went away between its two steps); longer with a longer lock timeout (a
/// database write waits for its lock at most that).
const BUSY_TTL: Duration = Duration::from_secs(60);
/// How long a token outlives its last use: longer than any read's database query.
const GEN_TTL: Duration = Duration::from_secs(3600);
/// How long reads skip the cache after it failed to answer.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// `{document or false, token, busy or "0"}`; the token is made (ARGV[1], TTL ARGV[2] ms)
/// if there is none.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local token = redis.call('GET', KEYS[2])
if not token then
  token = ARGV[1]
  redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
end
return {redis.call('GET', KEYS[1]) or false, token, redis.call('GET', KEYS[3]) or '0'}
",
    )
});

/// Puts ARGV[2] in KEYS[1] until ARGV[3] (Unix ms), only if the token KEYS[2] is there and
/// is ARGV[1], and no write is under way (KEYS[3]): 1 if put.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
",
    )
});

/// A write begins (ARGV[1] = 1) or ends (0): a new token ARGV[4] in KEYS[2] (TTL ARGV[3]
/// ms), the document KEYS[1] dropped, the busy count KEYS[3] up or down (TTL ARGV[2] ms).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
if ARGV[1] == '1' then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
elseif tonumber(redis.call('DECR', KEYS[3])) <= 0 then
  redis.call('DEL', KEYS[3])
end
return 1
",
    )
});

/// What a read of the cache found.
pub(crate) enum Cached {
    /// The document (our format), current.
    Hit(String),
    /// Not there: read the database, then [`RedisCache::fill`] with this counter (`None`:
    /// a write is under way, do not fill).
    Miss(Option<String>),
}

/// The Redis side of `cached_db`.
pub(crate) struct RedisCache {
    shared: Arc<Shared>,
    prefix: String,
    /// How long a write counts as under way if it never says it is done.
    busy_ttl: Duration,
    /// Until when reads skip the cache (it failed to answer).
    down_until: Mutex<Option<Instant>>,
}

/// A fresh token: 122 random bits, never the same twice.
fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisCache {
    /// A pool to the Redis at `url` (checked with `PING`), keys under `prefix`, for a
    /// database whose writes wait for their lock at most `lock_timeout`.
    ///
    /// # Errors
    /// [`StoreError::Backend`]: Redis does not answer, or the URL is invalid.
    pub(crate) fn open(
        url: &str,
        prefix: &str,
        lock_timeout: Duration,
    ) -> Result<RedisCache, StoreError> {
        let shared = Shared::connect_to(url, " (the session cache)")?;
        Ok(RedisCache {
            shared: Arc::new(shared),
            prefix: prefix.to_owned(),
            busy_ttl: BUSY_TTL.max(lock_timeout.saturating_add(Duration::from_secs(30))),
            down_until: Mutex::new(None),
        })
    }

    /// The Redis, as it may be shown.
    pub(crate) fn url(&self) -> &str {
        &self.shared.url
    }

    fn keys(&self, key: &SessionKey) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}cache:{key}"),
            format!("{p}cache-gen:{key}"),
            format!("{p}cache-busy:{key}"),
        ]
    }

    /// The session's document if the cache holds it and no write is under way.
    ///
    /// # Errors
    /// Redis failed, now or less than [`DOWN_FOR`] ago (the caller reads the database
    /// instead, at once).
    pub(crate) fn read(&self, key: &SessionKey) -> Result<Cached, StoreError> {
        if crate::store::locked(&self.down_until).is_some_and(|t| Instant::now() < t) {
            return Err(StoreError::Unavailable(format!(
                "Redis at {} (the session cache) did not answer a moment ago",
                self.shared.url
            )));
        }
        let [data, generation, busy] = self.keys(key);
        let fresh = token();
        let read = self.shared.run("read the session cache", |conn| {
            READ.key(&data)
                .key(&generation)
                .key(&busy)
                .arg(&fresh)
                .arg(millis(GEN_TTL))
                .invoke::<(Option<String>, String, String)>(conn)
        });
        let (found, counter, writing) = match read {
            Ok(found) => {
                *crate::store::locked(&self.down_until) = None;
                found
            }
            Err(e) => {
                *crate::store::locked(&self.down_until) = Some(Instant::now() + DOWN_FOR);
                return Err(e);
            }
        };
        let under_way = writing.parse::<i64>().unwrap_or(1) > 0;
        Ok(match found {
            Some(document) if !under_way => Cached::Hit(document),
            _ => Cached::Miss((!under_way).then_some(counter)),
        })
    }

    /// Puts a document read from the database in the cache until `until`, unless a write
    /// began since [`read`](RedisCache::read) gave the token `counter`. Failures are
    /// logged: the next read goes to the database.
    pub(crate) fn fill(&self, key: &SessionKey, counter: &str, document: &str, until: SystemTime) {
        let [data, generation, busy] = self.keys(key);
        let filled = self.shared.run("fill the session cache", |conn| {
            FILL.key(&data)
                .key(&generation)
                .key(&busy)
                .arg(counter)
                .arg(document)
                .arg(epoch_ms(until))
                .invoke::<i64>(conn)
        });
        if let Err(e) = filled {
            log::warn!("session {}: {e}; it is read from the database", key.short());
        }
    }

    /// Says a write of `key` begins (`true`) or has ended (`false`).
    ///
    /// # Errors
    /// Redis failed. At the beginning: write nothing (the cache could keep an older copy).
    pub(crate) fn write(&self, key: &SessionKey, begins: bool) -> Result<(), StoreError> {
        let [data, generation, busy] = self.keys(key);
        let fresh = token();
        self.shared
            .run("invalidate the session cache", |conn| {
                WRITE
                    .key(&data)
                    .key(&generation)
                    .key(&busy)
                    .arg(if begins { "1" } else { "0" })
                    .arg(millis(self.busy_ttl))
                    .arg(millis(GEN_TTL))
                    .arg(&fresh)
                    .invoke::<i64>(conn)
            })
            .map(|_| ())
    }
}
