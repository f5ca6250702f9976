//! The cache of `cached_db` ([`CachedDbStore`](crate::store::cached_db::CachedDbStore)):
//! session documents in Redis, in front of the database, kept so that no read is ever served
//! an older copy than the database holds.
//!
//! Three keys per session, under the store's prefix:
//! `cache:<key>` (the document, our own format, with a TTL), `cache-gen:<key>` (a counter
//! bumped at every write) and `cache-busy:<key>` (how many writes are under way, with a
//! TTL). A write bumps the counter, drops the document and counts itself busy *before* it
//! writes the database, and does it all again (counting itself done) after. A read that
//! misses notes the counter, reads the database, and puts the document in the cache only
//! if the counter is still the one it noted and no write is under way (one Lua script). So
//! a copy read before a write can never land after it, even when the write's second step
//! fails (Redis gone at that instant): the busy count then stays until its TTL, and every
//! read goes to the database meanwhile. A write whose first step fails writes nothing (the
//! request answers 503): the database is never changed behind a cache that could not be
//! told.

use std::sync::LazyLock;

use redis::Script;

use super::connection::{LastError, Shared};
use super::*;

/// How long a write counts as under way if it never says it is done (its process died, or
/// Redis went away between its two steps): longer than any database write takes (the lock
/// timeout, the database's 10 s statement timeout).
const BUSY_TTL: Duration = Duration::from_secs(60);
/// How long a counter outlives its last write: longer than any read's database query.
const GEN_TTL: Duration = Duration::from_secs(3600);

/// `{document or false, counter or "0", busy or "0"}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or '0',
        redis.call('GET', KEYS[3]) or '0'}
",
    )
});

/// Puts ARGV[2] in KEYS[1] until ARGV[3] (Unix ms), only if the counter KEYS[2] is still
/// ARGV[1] and no write is under way (KEYS[3]): 1 if put.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
",
    )
});

/// A write begins (ARGV[1] = 1) or ends (0): the counter KEYS[2] bumped (TTL ARGV[3] ms),
/// the document KEYS[1] dropped, the busy count KEYS[3] up or down (TTL ARGV[2] ms).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
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
}

impl RedisCache {
    /// A pool to the Redis at `url` (checked with `PING`), keys under `prefix`.
    ///
    /// # Errors
    /// [`StoreError::Backend`]: Redis does not answer, or the URL is invalid.
    pub(crate) fn open(url: &str, prefix: &str) -> Result<RedisCache, StoreError> {
        let shown = redacted(url);
        let client = redis::Client::open(url).map_err(|e| StoreError::Backend {
            action: format!("Redis at {shown} (the session cache) is unreachable"),
            source: Box::new(e),
        })?;
        let last_error = LastError::default();
        let pool = Shared::pool(client, &last_error).map_err(|e| {
            StoreError::Unavailable(format!("Redis at {shown}: cannot make its pool: {e}"))
        })?;
        let shared = Shared {
            pool,
            last_error,
            url: shown.clone(),
            held: Mutex::new(HashMap::new()),
            renewer: std::sync::Once::new(),
        };
        shared
            .run("answer PING", |conn| {
                redis::cmd("PING").query::<String>(conn)
            })
            .map_err(|e| match e {
                StoreError::Backend { source, .. } => StoreError::Backend {
                    action: format!("Redis at {shown} (the session cache) is unreachable"),
                    source,
                },
                other => other,
            })?;
        Ok(RedisCache {
            shared: Arc::new(shared),
            prefix: prefix.to_owned(),
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
    /// Redis failed (the caller reads the database instead).
    pub(crate) fn read(&self, key: &SessionKey) -> Result<Cached, StoreError> {
        let [data, generation, busy] = self.keys(key);
        let (found, counter, writing): (Option<String>, String, String) =
            self.shared.run("read the session cache", |conn| {
                READ.key(&data).key(&generation).key(&busy).invoke(conn)
            })?;
        let under_way = writing.parse::<i64>().unwrap_or(1) > 0;
        Ok(match found {
            Some(document) if !under_way => Cached::Hit(document),
            _ => Cached::Miss((!under_way).then_some(counter)),
        })
    }

    /// Puts a document read from the database in the cache until `until`, unless a write
    /// began since [`read`](RedisCache::read) gave `counter`. Failures are logged: the
    /// next read goes to the database.
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
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.shared
            .run("invalidate the session cache", |conn| {
                WRITE
                    .key(&data)
                    .key(&generation)
                    .key(&busy)
                    .arg(if begins { "1" } else { "0" })
                    .arg(ms(BUSY_TTL))
                    .arg(ms(GEN_TTL))
                    .invoke::<i64>(conn)
            })
            .map(|_| ())
    }
}
