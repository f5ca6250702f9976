//! What a row's `session_data` holds and which keys name rows: filesession's JSON document
//! with UUID v4 keys, or Django's signed data with Django's keys (`SESSION_FORMAT=django`).

use std::time::SystemTime;

use super::{MAX_DOCUMENT_SIZE, Row};
use crate::key::SessionKey;
use crate::store::django::{DjangoCodec, log_refused};
use crate::store::{Record, StoreError, format};

/// The format of a store's rows.
pub(super) enum RowFormat {
    /// filesession's document (`store::format`), UUID v4 keys.
    Filesession,
    /// Django's `SessionBase.encode` (`store::django`), Django's keys.
    Django(DjangoCodec),
}

impl RowFormat {
    /// The table layout the database opens.
    pub(super) fn layout(&self) -> Layout {
        match self {
            RowFormat::Filesession => Layout::Filesession,
            RowFormat::Django(_) => Layout::Django,
        }
    }

    /// The name shown in `Debug`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            RowFormat::Filesession => "filesession",
            RowFormat::Django(_) => "django",
        }
    }

    /// A fresh random key of this format.
    pub(super) fn new_key(&self) -> SessionKey {
        match self {
            RowFormat::Filesession => SessionKey::generate(),
            RowFormat::Django(_) => SessionKey::generate_django(),
        }
    }

    /// Whether `key` may name a row: a key of the other format never does (no session, and
    /// no statement is run with it).
    pub(super) fn accepts(&self, key: &SessionKey) -> bool {
        key.is_django() == matches!(self, RowFormat::Django(_))
    }

    /// The key a cookie's value names, if it is one of this format.
    pub(super) fn parse_key(&self, text: &str) -> Option<SessionKey> {
        match self {
            RowFormat::Filesession => SessionKey::parse(text),
            RowFormat::Django(_) => SessionKey::parse_django(text),
        }
    }

    /// The record a row holds; `Ok(None)` (logged) if it is over 1 MiB or corrupt;
    /// in Django's format [`StoreError::Unverified`] (logged) if it is over 1 MiB or not
    /// signed by one of the keys.
    pub(super) fn decode(&self, key: &SessionKey, row: &Row) -> Result<Option<Record>, StoreError> {
        if row.document.len() > MAX_DOCUMENT_SIZE {
            if let RowFormat::Django(_) = self {
                log_refused("session row", Some(key), "over 1 MiB");
                return Err(StoreError::Unverified(*key));
            }
            log::warn!("session {}: its row is over 1 MiB; no session", key.short());
            return Ok(None);
        }
        match self {
            RowFormat::Filesession => match format::decode(row.document.as_bytes()) {
                Ok(record) => Ok(Some(record)),
                Err(e) => {
                    log::warn!("session {}: corrupt row ({e}); no session", key.short());
                    Ok(None)
                }
            },
            // The end is the row's `expire_date`, as Django reads it.
            RowFormat::Django(codec) => match codec.decode(&row.document) {
                Ok((data, expiry)) => Ok(Some(Record {
                    data: data.into(),
                    expiry,
                    expires_at: row.expires_at,
                })),
                Err(why) => {
                    log_refused("session row", Some(key), &why);
                    Err(StoreError::Unverified(*key))
                }
            },
        }
    }

    /// The row of `record` (`key`: `None` while creating, for error messages).
    pub(super) fn row(&self, key: Option<&SessionKey>, record: &Record) -> Result<Row, StoreError> {
        let document = match self {
            RowFormat::Filesession => {
                let bytes = format::encode_within(key, record, MAX_DOCUMENT_SIZE, false)?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            RowFormat::Django(codec) => {
                codec.encode(key, record, SystemTime::now(), MAX_DOCUMENT_SIZE)?
            }
        };
        Ok(Row {
            document,
            expires_at: record.expires_at,
        })
    }
}

/// The table a database opens, and how its `expire_date` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// filesession's table (`filesession_schema` names its version); SQLite: `expire_date`
    /// in Unix seconds, WAL mode.
    Filesession,
    /// Django's `django_session` as its migration makes it, never altered; SQLite:
    /// `expire_date` as Django's naive UTC text, the journal mode left as it is.
    Django,
}
