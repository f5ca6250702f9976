//! When a session ends: Django's `set_expiry` values as a type, and the age/date math.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// When a session expires. Django's `set_expiry(value)` with a type instead of magic values.
///
/// | Django                     | here                     |
/// |----------------------------|--------------------------|
/// | `set_expiry(None)`         | `Expiry::Default`        |
/// | `set_expiry(300)`          | `Expiry::Seconds(300)`   |
/// | `set_expiry(datetime)`     | `Expiry::At(time)`       |
/// | `set_expiry(0)`            | `Expiry::BrowserClose`   |
///
/// Unlike Django's file backend, an expiry in seconds is enforced on the server too: the
/// session file records the absolute time `last save + seconds`, and a load after it finds no
/// session.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use filesession::Expiry;
///
/// let now = SystemTime::now();
/// let cookie_age = Duration::from_secs(1_209_600);
/// assert_eq!(Expiry::Default.age(now, cookie_age), 1_209_600);
/// assert_eq!(Expiry::Seconds(300).age(now, cookie_age), 300);
/// assert_eq!(Expiry::BrowserClose.age(now, cookie_age), 1_209_600);
/// assert!(Expiry::BrowserClose.at_browser_close(false));
/// assert!(Expiry::Default.at_browser_close(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// `SESSION_COOKIE_AGE` after the last save (two weeks by default), and a browser-close
    /// cookie when `SESSION_EXPIRE_AT_BROWSER_CLOSE` is set. Django: `set_expiry(None)`.
    #[default]
    Default,
    /// This many seconds after the last save, on the cookie and on the server.
    /// `Seconds(0)` expires at once. Django: `set_expiry(n)` with `n > 0`.
    Seconds(u64),
    /// At this absolute time (kept to the millisecond, rounded up). A time in the past means
    /// already expired.
    /// Django: `set_expiry(datetime)` or `set_expiry(timedelta)`.
    At(SystemTime),
    /// When the browser closes: the cookie carries neither `Max-Age` nor `Expires`. On the
    /// server the session still ends `SESSION_COOKIE_AGE` after the last save.
    /// Django: `set_expiry(0)`.
    BrowserClose,
}

/// The latest time the session files can hold: 9999-12-31T23:59:59.999Z, in milliseconds.
pub(crate) const MAX_TIME_MILLIS: u64 = 253_402_300_799_999;

impl Expiry {
    /// Seconds until expiry, counted from `now` (a save happening now). Django's
    /// `get_expiry_age()`: the cookie age for `Default` and `BrowserClose`, the number itself
    /// for `Seconds`, and the whole seconds left (floored, possibly negative) for `At`.
    #[doc(alias = "get_expiry_age")]
    pub fn age(&self, now: SystemTime, cookie_age: Duration) -> i64 {
        match *self {
            Expiry::Default | Expiry::BrowserClose => saturating_i64(cookie_age.as_secs()),
            Expiry::Seconds(n) => saturating_i64(n),
            Expiry::At(at) => match at.duration_since(now) {
                Ok(left) => saturating_i64(left.as_secs()),
                Err(past) => {
                    let behind = past.duration();
                    // floor: 0.5 s in the past is -1, as Python's timedelta.days*86400+seconds
                    let whole = behind.as_secs() + u64::from(behind.subsec_nanos() > 0);
                    -saturating_i64(whole)
                }
            },
        }
    }

    /// The absolute time the session ends if it is saved at `now`. Django's
    /// `get_expiry_date()`.
    #[doc(alias = "get_expiry_date")]
    pub fn date(&self, now: SystemTime, cookie_age: Duration) -> SystemTime {
        match *self {
            Expiry::At(at) => clamp_time(at),
            Expiry::Default | Expiry::BrowserClose => add_clamped(now, cookie_age),
            // Ends as it is saved: rounding up would keep it alive for part of a millisecond.
            Expiry::Seconds(0) => clamp_time(floor_millis(now)),
            Expiry::Seconds(n) => add_clamped(now, Duration::from_secs(n)),
        }
    }

    /// Whether the cookie should end with the browser session. Django's
    /// `get_expire_at_browser_close()`: `Default` follows the global setting
    /// (`SESSION_EXPIRE_AT_BROWSER_CLOSE`), any explicit expiry overrides it.
    #[doc(alias = "get_expire_at_browser_close")]
    pub fn at_browser_close(&self, global_setting: bool) -> bool {
        match self {
            Expiry::Default => global_setting,
            Expiry::BrowserClose => true,
            Expiry::Seconds(_) | Expiry::At(_) => false,
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `t` as an RFC 3339 time of the file format says it: milliseconds from the Unix epoch up
/// to the end of year 9999, rounded up, so that a session set to end `N` seconds after a save
/// lives at least `N` seconds (issue 22: whole seconds, floored, ended some sessions almost a
/// second early). Django keeps its expiry as a float timestamp; tower-sessions at full
/// precision.
pub(crate) fn clamp_time(t: SystemTime) -> SystemTime {
    let millis = t
        .duration_since(UNIX_EPOCH)
        .map(|d| {
            let whole = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            whole.saturating_add(u64::from(d.subsec_nanos() % 1_000_000 > 0))
        })
        .unwrap_or(0)
        .min(MAX_TIME_MILLIS);
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// `t` without its fraction of a millisecond.
fn floor_millis(t: SystemTime) -> SystemTime {
    let below = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    t - Duration::from_nanos(u64::from(below))
}

/// `t + d`, saturating at the latest time the files can hold.
pub(crate) fn add_clamped(t: SystemTime, d: Duration) -> SystemTime {
    clamp_time(
        t.checked_add(d)
            .unwrap_or(UNIX_EPOCH + Duration::from_millis(MAX_TIME_MILLIS)),
    )
}

/// `t + d` for deadlines, or a day after `t` when `d` is too long to add (a limit of
/// `Duration::MAX` then means "a long time", never a panic).
pub(crate) fn later(t: std::time::Instant, d: Duration) -> std::time::Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(t)
}

/// RFC 3339 text of a time as the session files write it: UTC, always three digits of
/// milliseconds (rounded up), held to 1970-01-01 .. 9999-12-31 (what RFC 3339 can say):
/// `2026-12-10T11:37:46.250Z`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_millis(1_796_643_466_250);
/// assert_eq!(filesession::format_rfc3339(t), "2026-12-07T11:37:46.250Z");
/// assert_eq!(filesession::parse_rfc3339("2026-12-07T11:37:46.250Z"), Some(t));
/// ```
pub fn format_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(clamp_time(t)).to_string()
}

/// Parses RFC 3339 text in UTC (`2026-12-10T11:37:46.250Z`; whole seconds, as older
/// versions wrote, and any other number of fractional digits are read too).
///
/// Returns `None` for anything else.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExpiryRepr {
    Default,
    BrowserClose,
    Seconds(u64),
    At(String),
}

/// In the session file: `"default"`, `"browser_close"`, `{"seconds": 300}` or
/// `{"at": "2026-12-10T11:37:46.000Z"}`.
impl Serialize for Expiry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Expiry::Default => ExpiryRepr::Default,
            Expiry::BrowserClose => ExpiryRepr::BrowserClose,
            Expiry::Seconds(n) => ExpiryRepr::Seconds(n),
            Expiry::At(t) => ExpiryRepr::At(format_rfc3339(t)),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ExpiryRepr::deserialize(d)? {
            ExpiryRepr::Default => Expiry::Default,
            ExpiryRepr::BrowserClose => Expiry::BrowserClose,
            ExpiryRepr::Seconds(n) => Expiry::Seconds(n),
            ExpiryRepr::At(text) => Expiry::At(parse_rfc3339(&text).ok_or_else(|| {
                serde::de::Error::custom(format!("expiry time {text:?} is not RFC 3339"))
            })?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(1_209_600);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn default_expiry_is_the_cookie_age() {
        let now = t(1_000_000);
        assert_eq!(Expiry::Default.age(now, AGE), 1_209_600);
        assert_eq!(Expiry::Default.date(now, AGE), t(1_000_000 + 1_209_600));
    }

    #[test]
    fn seconds_expiry_counts_from_the_save() {
        let now = t(1_000_000);
        assert_eq!(Expiry::Seconds(10).age(now, AGE), 10);
        assert_eq!(Expiry::Seconds(10).date(now, AGE), t(1_000_010));
    }

    #[test]
    fn a_session_of_n_seconds_lives_n_seconds_not_less() {
        // Saved 950 ms into a second: whole seconds, floored, ended it 50 ms later.
        let now = t(1_000_000) + Duration::from_millis(950);
        let end = Expiry::Seconds(1).date(now, AGE);
        assert_eq!(end, t(1_000_001) + Duration::from_millis(950));
        assert_eq!(format_rfc3339(end), "1970-01-12T13:46:41.950Z");
        // A time between two milliseconds is rounded up, never down.
        let odd = now + Duration::from_nanos(1);
        let end = Expiry::Seconds(1).date(odd, AGE);
        assert!(end >= odd + Duration::from_secs(1), "{end:?}");
        assert_eq!(format_rfc3339(end), "1970-01-12T13:46:41.951Z");
        assert_eq!(parse_rfc3339(&format_rfc3339(end)), Some(end));
    }

    #[test]
    fn times_in_whole_seconds_as_older_files_hold_them_still_parse() {
        assert_eq!(parse_rfc3339("1970-01-12T13:46:40Z"), Some(t(1_000_000)));
        assert_eq!(
            serde_json::from_str::<Expiry>(r#"{"at":"1970-01-12T13:46:40Z"}"#).unwrap(),
            Expiry::At(t(1_000_000))
        );
    }

    #[test]
    fn absolute_expiry_age_is_floored_and_may_be_negative() {
        let now = t(1_000_000);
        assert_eq!(Expiry::At(t(1_000_100)).age(now, AGE), 100);
        assert_eq!(Expiry::At(t(999_990)).age(now, AGE), -10);
        let half_second_ago = now - Duration::from_millis(500);
        assert_eq!(Expiry::At(half_second_ago).age(now, AGE), -1);
        assert_eq!(Expiry::At(t(1_000_100)).date(now, AGE), t(1_000_100));
    }

    #[test]
    fn browser_close_follows_django_rules() {
        assert!(!Expiry::Default.at_browser_close(false));
        assert!(Expiry::Default.at_browser_close(true));
        assert!(Expiry::BrowserClose.at_browser_close(false));
        assert!(!Expiry::Seconds(10).at_browser_close(true));
        assert!(!Expiry::At(t(5)).at_browser_close(true));
        assert_eq!(Expiry::BrowserClose.age(t(0), AGE), 1_209_600);
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let far = Expiry::Seconds(u64::MAX).date(SystemTime::now(), AGE);
        assert_eq!(format_rfc3339(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(Expiry::Seconds(u64::MAX).age(t(0), AGE), i64::MAX);
        let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format_rfc3339(before_epoch), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn expiry_serializes_readably_and_round_trips() {
        let cases = [
            (Expiry::Default, r#""default""#),
            (Expiry::BrowserClose, r#""browser_close""#),
            (Expiry::Seconds(300), r#"{"seconds":300}"#),
            (
                Expiry::At(t(1_796_643_466)),
                r#"{"at":"2026-12-07T11:37:46.000Z"}"#,
            ),
        ];
        for (expiry, json) in cases {
            assert_eq!(serde_json::to_string(&expiry).unwrap(), json);
            assert_eq!(serde_json::from_str::<Expiry>(json).unwrap(), expiry);
        }
        assert!(serde_json::from_str::<Expiry>(r#"{"at":"tomorrow"}"#).is_err());
    }
}
