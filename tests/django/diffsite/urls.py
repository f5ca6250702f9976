"""filesession's demo routes (src/app/mod.rs `demo_router`), path for path.

filesession routes by method and path and answers 405 when the path exists for other
methods only, so `/api/session/flush` (POST: flush) is also `DELETE /api/session/{name}`
with name "flush": those paths dispatch on the method in views.py.
"""
from django.urls import path

from . import views

urlpatterns = [
    path("setsession/", views.setsession),
    path("getsession/", views.getsession),
    path("api/session", views.session_root),
    path("api/session/flush", views.named_action("flush")),
    path("api/session/cycle", views.named_action("cycle")),
    path("api/session/expiry", views.named_action("expiry")),
    path("api/session/incr/<str:name>", views.incr),
    path("api/session/<str:name>", views.delete_key),
    # DELETE /api/session/: the empty key, which <str:name> cannot name.
    path("api/session/", views.delete_key, {"name": ""}),
]
