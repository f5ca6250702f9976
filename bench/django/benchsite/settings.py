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
SESSION_FILE_PATH = os.environ.get("SESSION_FILE_PATH", tempfile.gettempdir())
USE_TZ = True
LOGGING_CONFIG = None
