"""JSON views over Django's session and django.contrib.auth, for tests/django_shared.rs.

Every answer is {"session": dict(request.session.items()), "session_key": ...,
"user": request.user's id or null}, read after the view's change (before the middleware's
save: a key the save creates shows in the cookie, not here). Python's json keeps integers of
any size and escapes non-ASCII text, so a value shows exactly as Django holds it.
"""
import datetime
import json

from django.contrib import auth
from django.contrib.auth.models import User
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


def _answer(request, status=200):
    user = request.user
    return JsonResponse(
        {
            "session": dict(request.session.items()),
            "session_key": request.session.session_key,
            "user": user.pk if user.is_authenticated else None,
        },
        status=status,
    )


def _body(request):
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def session(request):
    """GET: the whole session."""
    return _answer(request)


@csrf_exempt
def set_keys(request):
    """POST a JSON object: sets each of its keys."""
    body = _body(request)
    if request.method != "POST" or body is None:
        return JsonResponse({"error": "POST a JSON object"}, status=400)
    request.session.update(body)
    return _answer(request)


@csrf_exempt
def login(request):
    """POST: logs in alice (created if missing) with django.contrib.auth.login."""
    if request.method != "POST":
        return JsonResponse({"error": "POST"}, status=405)
    user, _ = User.objects.get_or_create(username="alice")
    auth.login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return _answer(request)


@csrf_exempt
def logout(request):
    """POST: django.contrib.auth.logout (flushes the session)."""
    if request.method != "POST":
        return JsonResponse({"error": "POST"}, status=405)
    auth.logout(request)
    return _answer(request)


@csrf_exempt
def set_expiry(request):
    """POST {"seconds": N} or {"at": "<ISO 8601 datetime>"}: request.session.set_expiry."""
    body = _body(request)
    if request.method != "POST" or body is None:
        return JsonResponse({"error": "POST a JSON object"}, status=400)
    if "at" in body:
        request.session.set_expiry(datetime.datetime.fromisoformat(body["at"]))
    else:
        request.session.set_expiry(body.get("seconds"))
    return _answer(request)


def whoami(request):
    """GET: who request.user is, without touching anything else of the session."""
    user = request.user
    if user.is_authenticated:
        return JsonResponse({"user": user.pk, "username": user.get_username()})
    return JsonResponse({"user": None, "username": None})
