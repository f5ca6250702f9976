//! The Lua scripts every change runs as: each one atomic in Redis, sent by its SHA-1
//! (`EVALSHA`, `redis::Script`), and loaded first where Redis does not know it yet.

use std::sync::LazyLock;

use redis::Script;

/// [`LOAD_SCRIPT`].
pub(super) static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD_SCRIPT));
/// [`CREATE_SCRIPT`].
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE_SCRIPT));
/// [`APPLY_SCRIPT`].
pub(super) static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_SCRIPT));
/// [`LOCK_SCRIPT`].
pub(super) static LOCK: LazyLock<Script> = LazyLock::new(|| Script::new(LOCK_SCRIPT));
/// [`RENEW_SCRIPT`].
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_SCRIPT));
/// [`UNLOCK_SCRIPT`].
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK_SCRIPT));

/// `{PTTL, HGETALL}` of KEYS[1], or nil if it does not exist.
pub(super) const LOAD_SCRIPT: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return false end
return {ttl, redis.call('HGETALL', KEYS[1])}
";

/// ARGV: expires_at ms, then field/value pairs. 1 if created, 0 if the key exists.
pub(super) const CREATE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
";

/// Shared by save (KEYS = {lock, key}) and cycle (KEYS = {lock, old, new}): applies the
/// changes on the last key. ARGV: the request lock's token ("" in merge mode: no check),
/// cleared (0/1), expires_at ms, expiry rule JSON, set rule (0/1), n removals, the removals,
/// then field/value pairs. Returns {status, HGETALL}: status 0 the session is gone, 1 the new
/// key is taken, 2 done, 3 the request lock is no longer this request's (nothing written).
pub(super) const APPLY_SCRIPT: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return {3, {}} end
local key = KEYS[#KEYS]
if redis.call('EXISTS', KEYS[2]) == 0 then return {0, {}} end
if #KEYS == 3 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {1, {}} end
  redis.call('RENAME', KEYS[2], KEYS[3])
end
if ARGV[2] == '1' then
  local rule = redis.call('HGET', key, '__expiry')
  redis.call('DEL', key)
  if rule then redis.call('HSET', key, '__expiry', rule) end
end
if ARGV[5] == '1' then
  redis.call('HSET', key, '__expiry', ARGV[4])
else
  redis.call('HSETNX', key, '__expiry', ARGV[4])
end
local n = tonumber(ARGV[6])
for i = 7, 6 + n do redis.call('HDEL', key, ARGV[i]) end
for i = 7 + n, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
local fields = redis.call('HGETALL', key)
redis.call('PEXPIREAT', key, ARGV[3])
return {2, fields}
";

/// Takes the lock KEYS[1] with token ARGV[1] for ARGV[2] ms: 1 if taken (or already ours, so
/// that a retry after a lost reply does not wait on itself), 0 if someone else holds it,
/// unless that someone's token is ARGV[3] (a holder on this machine found dead; "" for none).
pub(super) const LOCK_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Extends the lease KEYS[1] to ARGV[2] ms if it still holds ARGV[1]: 1, else 0.
pub(super) const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Deletes KEYS[1] only if it holds ARGV[1].
pub(super) const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
