"""The test views of sharedsite (views.py)."""
from django.urls import path

from . import views

urlpatterns = [
    path("session", views.session),
    path("set", views.set_keys),
    path("login", views.login),
    path("logout", views.logout),
    path("expiry", views.set_expiry),
    path("whoami", views.whoami),
]
