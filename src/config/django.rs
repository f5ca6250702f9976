//! `SESSION_FORMAT`, and what Django's format and signed cookies need of the settings.

use super::{DEFAULT_DB_TABLE, DJANGO_DB_TABLE, Engine, SettingError, Settings};
use crate::signing::Signer;

/// How sessions are kept (`SESSION_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionFormat {
    /// `filesession`: JSON documents (`<key>.json`, the `filesession_session` table), UUID
    /// v4 keys. The default.
    #[default]
    Filesession,
    /// `django`: Django 5.2's own data, shared with a running Django site: signed
    /// `session_data` in its `django_session` table (`SESSION_ENGINE=db`), its file layout
    /// `<SESSION_COOKIE_NAME><key>` (`SESSION_ENGINE=file`), Django's keys (32 of
    /// `[a-z0-9]`) and `_session_expiry`. Needs `SECRET_KEY`.
    Django,
}

impl Settings {
    /// The session table: `SESSION_DB_TABLE`, except that in Django's format the default
    /// `filesession_session` stands for Django's `django_session`.
    pub fn session_table(&self) -> &str {
        if self.format == SessionFormat::Django && self.db_table == DEFAULT_DB_TABLE {
            DJANGO_DB_TABLE
        } else {
            &self.db_table
        }
    }

    /// The signer of this format's session data (salt `SESSION_SIGNING_SALT`), or of
    /// signed cookies, from `SECRET_KEY` and `SECRET_KEY_FALLBACKS`; `None` without a
    /// `SECRET_KEY`.
    pub fn signer(&self, salt: &str) -> Option<Signer> {
        let key = self.secret_key.as_ref()?;
        Some(Signer::from_keys(key, &self.secret_key_fallbacks, salt))
    }
}

impl Settings {
    /// What Django's format and signed cookies need: a `SECRET_KEY`, an engine that keeps
    /// Django's data.
    pub(super) fn validate_signing(&self) -> Result<(), SettingError> {
        let bad = |msg: &str| Err(SettingError(msg.to_owned()));
        let django = self.format == SessionFormat::Django;
        if self
            .secret_key
            .as_ref()
            .is_some_and(|k| k.expose().is_empty())
        {
            return bad("SECRET_KEY must not be empty");
        }
        if self.secret_key.is_none() && (django || self.engine == Engine::SignedCookies) {
            return bad(if django {
                "SESSION_FORMAT=django needs SECRET_KEY: the Django project's \
                 settings.SECRET_KEY, which signs its sessions (give it in the environment, \
                 not on the command line)"
            } else {
                "SESSION_ENGINE=signed_cookies needs SECRET_KEY, which signs the cookies \
                 (give it in the environment, not on the command line)"
            });
        }
        if django && matches!(self.engine, Engine::Redis | Engine::CachedDb) {
            return bad(
                "SESSION_FORMAT=django works with SESSION_ENGINE=db, file or signed_cookies: \
                 Django's cache engines keep pickled sessions, which filesession does not read",
            );
        }
        if self.signing_salt.is_empty() {
            return bad("SESSION_SIGNING_SALT must not be empty");
        }
        Ok(())
    }
}
