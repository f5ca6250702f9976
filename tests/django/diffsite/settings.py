"""Settings of the Django peer: sessions only, every SESSION_* setting that filesession has
read from the same environment variable (filesession's names are Django's).

filesession's own settings with no Django counterpart (SESSION_LOCKING, SESSION_FILE_FSYNC,
SESSION_LOCK_TIMEOUT, SESSION_GC_INTERVAL, SESSION_WORKERS, SESSION_REDIS_URL) are not read:
Django has nothing they could change.
"""
import logging
import os
import tempfile


def _env(name, default=None):
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _bool(name, default):
    """Booleans as filesession reads them: true/false, 1/0, yes/no, on/off."""
    value = _env(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name}: not a boolean: {value!r}")


def _samesite(value):
    """filesession's `false` omits the attribute, as Django's False."""
    if value.strip().lower() == "false":
        return False
    return value


def _engine(value):
    """filesession's `file` is Django's file backend; a dotted Django path is kept."""
    if value == "file":
        return "django.contrib.sessions.backends.file"
    if "." in value:
        return value
    raise ValueError(f"SESSION_ENGINE: the Django peer has no engine {value!r}")


SECRET_KEY = "differential-test-only-not-secret"
DEBUG = False
# The test sends `Host: test`; the rest are for a person poking at it by hand.
ALLOWED_HOSTS = [".localhost", "127.0.0.1", "[::1]"]  # filesession's default, Django's with DEBUG on
INSTALLED_APPS = ["django.contrib.sessions"]
MIDDLEWARE = [
    # Outermost: fills the API's JSON answers after SessionMiddleware saved (filesession's
    # `Response::json_after_save`), so that a new key shows.
    "diffsite.views.DescribeAfterSaveMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # APPEND_SLASH (default True): the 301 from /setsession to /setsession/.
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "diffsite.urls"
DATABASES = {}
USE_TZ = True
# No Django logging config: errors (a 500's traceback) go to stderr, which the test shows.
LOGGING_CONFIG = None
logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")

SESSION_ENGINE = _engine(_env("SESSION_ENGINE", "file"))
SESSION_SERIALIZER = "django.contrib.sessions.serializers.JSONSerializer"
SESSION_FILE_PATH = _env("SESSION_FILE_PATH", tempfile.gettempdir())
SESSION_COOKIE_NAME = _env("SESSION_COOKIE_NAME", "sessionid")
SESSION_COOKIE_AGE = int(_env("SESSION_COOKIE_AGE", "1209600"))
SESSION_COOKIE_DOMAIN = _env("SESSION_COOKIE_DOMAIN")
SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
SESSION_COOKIE_PATH = _env("SESSION_COOKIE_PATH", "/")
SESSION_COOKIE_HTTPONLY = _bool("SESSION_COOKIE_HTTPONLY", True)
SESSION_COOKIE_SAMESITE = _samesite(_env("SESSION_COOKIE_SAMESITE", "Lax"))
SESSION_SAVE_EVERY_REQUEST = _bool("SESSION_SAVE_EVERY_REQUEST", False)
SESSION_EXPIRE_AT_BROWSER_CLOSE = _bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", False)
# filesession's default is 64 KiB (Django's 2.5 MB); the same variable sets both.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(_env("DATA_UPLOAD_MAX_MEMORY_SIZE", "65536"))
