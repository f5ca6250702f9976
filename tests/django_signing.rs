//! `filesession::signing` against Django 5.2's own `django.core.signing`, both ways: what
//! Django signs (compressed payloads, non-ASCII text, a 20-digit integer, nested JSON) reads
//! back here as the same objects, and what this signs Django verifies and loads as the same
//! objects; uncompressed payloads are the same bytes. Needs a Python with Django 5.2
//! (`tests/django/.venv`, `bench/.venv` or `FILESESSION_DJANGO_PYTHON`); `.ci/run` installs
//! one and sets `FILESESSION_DJANGO_TEST=require`.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filesession::signing::{SESSION_SALT, Signer};
use serde_json::{Value, json};

const KEY: &str = "django-insecure-filesession-differential-key";

/// What Django does with the objects or signed values on stdin (one JSON document).
const SCRIPT: &str = r#"
import json, sys
from django.conf import settings
settings.configure(SECRET_KEY=sys.argv[2], SECRET_KEY_FALLBACKS=[])
from django.core import signing
salt, mode = sys.argv[1], sys.argv[3]
items = json.loads(sys.stdin.read())
signer = signing.TimestampSigner(salt=salt)
if mode == "sign":
    out = [signer.sign_object(o, serializer=signing.JSONSerializer, compress=True) for o in items]
else:
    out = [signer.unsign_object(s, serializer=signing.JSONSerializer) for s in items]
print(json.dumps(out))
"#;

fn django(python: &Path, mode: &str, items: &Value) -> Value {
    let args = [SESSION_SALT, KEY, mode].map(std::ffi::OsStr::new);
    common::run_python_json(python, SCRIPT, &args, items)
}

fn objects() -> Vec<Value> {
    vec![
        json!({"name": "Zoë 😀 日本", "ctrl": "\u{0}\u{7f}\n\t\"\\"}),
        serde_json::from_str(r#"{"big": 12345678901234567890, "neg": -98765432109876543210}"#)
            .expect("big integers"),
        json!({"a": {"b": [1, {"c": null, "d": true}], "e": 1.5}, "_auth_user_id": "1"}),
        json!({"text": "x".repeat(2000), "list": vec![7; 300]}),
        json!({}),
    ]
}

#[test]
fn django_and_filesession_read_each_others_signed_sessions() {
    let python = match common::django_python() {
        Ok(python) => python,
        Err(why) => {
            common::skip("Django signing", &why, "FILESESSION_DJANGO_TEST");
            return;
        }
    };
    let signer = Signer::new(KEY, &[], SESSION_SALT);
    let objects = objects();
    // Django signs; filesession reads the same objects.
    let signed_by_django = django(&python, "sign", &Value::Array(objects.clone()));
    let signed_by_django = signed_by_django.as_array().expect("a list");
    let now = SystemTime::now();
    let mut compressed = 0;
    for (object, signed) in objects.iter().zip(signed_by_django) {
        let signed = signed.as_str().expect("a string");
        compressed += usize::from(signed.starts_with('.'));
        assert_eq!(
            &signer
                .unsign_object(signed, None, now)
                .expect("Django's signature"),
            object,
            "{signed}"
        );
    }
    assert!(compressed >= 1, "a compressed payload was tried");
    // filesession signs; Django verifies and loads the same objects.
    let ours: Vec<Value> = objects
        .iter()
        .map(|o| Value::String(signer.sign_object(o, true, now)))
        .collect();
    let loaded = django(&python, "load", &Value::Array(ours.clone()));
    assert_eq!(loaded, Value::Array(objects.clone()));
    // Uncompressed payloads are Django's bytes (at one signing time).
    let at = UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs());
    for (object, django_signed) in objects.iter().zip(signed_by_django) {
        let django_signed = django_signed.as_str().unwrap();
        if django_signed.starts_with('.') {
            continue;
        }
        let (payload, _) = django_signed.split_once(':').unwrap();
        let ours = signer.sign_object(object, true, at);
        assert_eq!(ours.split_once(':').unwrap().0, payload, "{object}");
    }
}
