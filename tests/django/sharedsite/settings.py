"""Settings of the Django site that shares its sessions with filesession
(tests/django_shared.rs): every value from the environment, under the names filesession
reads (docs/django.md, "Running next to Django").

    SESSION_ENGINE        db, file or signed_cookies (Django's dotted paths)
    DATABASE_URL          sqlite:////absolute/path or postgres://user:password@host:port/db
    SESSION_FILE_PATH     the file engine's directory
    SECRET_KEY            required
    SECRET_KEY_FALLBACKS  comma-separated
    SESSION_COOKIE_NAME, SESSION_COOKIE_AGE
"""
import logging
import os
import urllib.parse


def _env(name, default=None):
    value = os.environ.get(name)
    return default if value is None or value == "" else value


_ENGINES = {
    "db": "django.contrib.sessions.backends.db",
    "file": "django.contrib.sessions.backends.file",
    "signed_cookies": "django.contrib.sessions.backends.signed_cookies",
}


def _database(url):
    """DATABASES["default"] from a DATABASE_URL as filesession reads it."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path; sqlite:///relative -> relative
        path = url[len("sqlite:///"):]
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": urllib.parse.unquote(parsed.path.lstrip("/")),
            "USER": urllib.parse.unquote(parsed.username or ""),
            "PASSWORD": urllib.parse.unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
        }
    raise ValueError(f"DATABASE_URL: not sqlite:// or postgres://: {url!r}")


SECRET_KEY = os.environ["SECRET_KEY"]
SECRET_KEY_FALLBACKS = [k for k in _env("SECRET_KEY_FALLBACKS", "").split(",") if k]
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "sharedsite.urls"
DATABASES = {"default": _database(os.environ["DATABASE_URL"])}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
# No Django logging config: errors (a 500's traceback) go to stderr, which the test shows.
LOGGING_CONFIG = None
logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")

SESSION_ENGINE = _ENGINES[_env("SESSION_ENGINE", "db")]
SESSION_SERIALIZER = "django.contrib.sessions.serializers.JSONSerializer"
SESSION_FILE_PATH = _env("SESSION_FILE_PATH")
SESSION_COOKIE_NAME = _env("SESSION_COOKIE_NAME", "sessionid")
SESSION_COOKIE_AGE = int(_env("SESSION_COOKIE_AGE", "1209600"))
