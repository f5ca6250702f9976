"""Minimal settings: only what sessions need, with Django's file backend (or, with
BENCH_DJANGO_DB=<path>, its db backend on SQLite)."""
import os
import tempfile

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.sessions"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"
DATABASES = {}
SESSION_ENGINE = "django.contrib.sessions.backends.file"
if os.environ.get("BENCH_DJANGO_DB"):
    # Django's default engine: sessions in the database (SQLite here).
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_DJANGO_DB"]}}
    SESSION_ENGINE = "django.contrib.sessions.backends.db"
if os.environ.get("BENCH_DJANGO_PG"):
    # The db backend on PostgreSQL (psycopg 3): BENCH_DJANGO_PG=host:port.
    host, port = os.environ["BENCH_DJANGO_PG"].split(":")
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                             "USER": "postgres", "HOST": host, "PORT": port, "CONN_MAX_AGE": None}}
    SESSION_ENGINE = "django.contrib.sessions.backends.db"
if os.environ.get("BENCH_DJANGO_REDIS"):
    # Redis as Django's cache (django.core.cache.backends.redis, redis-py): the cache
    # backend alone, or cached_db in front of the database above (BENCH_DJANGO_ENGINE).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": os.environ["BENCH_DJANGO_REDIS"]}}
    SESSION_ENGINE = "django.contrib.sessions.backends." + os.environ.get("BENCH_DJANGO_ENGINE", "cache")
SESSION_FILE_PATH = os.environ.get("SESSION_FILE_PATH", tempfile.gettempdir())
USE_TZ = True
LOGGING_CONFIG = None
