"""Views that mirror filesession's demo routes (src/app/mod.rs, src/app/api.rs): the same
paths, methods, status codes and bodies, as far as Django allows.

The API answers describe the session AFTER SessionMiddleware saved it, as filesession's
`Response::json_after_save` does: a view returns `answer()`, a marked empty response, and
the outermost middleware (`DescribeAfterSaveMiddleware`) fills in the JSON once the session
middleware has run, so that a new key (first write, `cycle_key`) shows.
"""
import datetime
import json
import os

from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _rfc3339(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(session):
    """filesession's `describe`: {"session_key", "expires_at", "expire_at_browser_close",
    "data"}. Django keeps a custom expiry inside the data as `_session_expiry`; filesession
    keeps it beside the data, so it is left out of "data" here. "expires_at" is when the
    file backend will find the stored session expired: the file's mtime plus the expiry age
    (null when nothing is stored)."""
    key = session.session_key
    data = {k: v for k, v in session.items() if k != "_session_expiry"}
    expires_at = None
    if key is not None:
        try:
            modified = session._last_modification()
        except OSError:
            modified = None
        if modified is not None:
            age = session.get_expiry_age(
                modification=modified, expiry=session.get("_session_expiry")
            )
            expires_at = _rfc3339(modified + datetime.timedelta(seconds=age))
    return {
        "session_key": key,
        "expires_at": expires_at,
        "expire_at_browser_close": session.get_expire_at_browser_close(),
        "data": data,
    }


def answer():
    response = HttpResponse(status=200, content_type="application/json")
    response.describe_after_save = True
    return response


class DescribeAfterSaveMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if getattr(response, "describe_after_save", False):
            response.content = json.dumps(describe(request.session)).encode()
            # CommonMiddleware already set Content-Length for the empty placeholder.
            response.headers["Content-Length"] = str(len(response.content))
        return response


def error(status, message):
    return JsonResponse({"error": message}, status=status)


def json_object(request):
    """(the body as a dict, None) or (None, the error response), as filesession's
    `json_object`. Reading request.body over DATA_UPLOAD_MAX_MEMORY_SIZE raises Django's
    RequestDataTooBig (400), left to Django."""
    if request.content_type != "application/json":
        return None, error(415, "The body must be application/json.")
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as e:
        return None, error(400, f"Malformed JSON: {e}.")
    if not isinstance(value, dict):
        return None, error(400, "The body must be a JSON object.")
    return value, None


def text(status, body):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


def setsession(request):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    request.session["sname"] = "abc"
    request.session["semail"] = "abc@gmail.com"
    return text(200, "session is set")


def getsession(request):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    name, email = request.session.get("sname"), request.session.get("semail")
    if name is None or email is None:
        return text(
            404, "No session data yet: visit /setsession/ first, then /getsession/ again.\n"
        )

    def show(v):
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

    return text(200, f"{show(name)} {show(email)}")


@csrf_exempt
def session_root(request):
    if request.method in ("GET", "HEAD"):
        request.session.keys()  # reading never creates a session
        return answer()
    if request.method == "POST":
        data, err = json_object(request)
        if err is not None:
            return err
        request.session.update(data)
        return answer()
    return HttpResponseNotAllowed(["GET", "POST", "HEAD"])


def _delete(request, name):
    if name in request.session:
        del request.session[name]
        return answer()
    return error(404, f"No key {json.dumps(name)} in the session.")


@csrf_exempt
def delete_key(request, name):
    if request.method != "DELETE":
        return HttpResponseNotAllowed(["DELETE"])
    return _delete(request, name)


def _flush(request):
    request.session.flush()
    return answer()


def _cycle(request):
    request.session.cycle_key()
    return answer()


def _expiry(request):
    data, err = json_object(request)
    if err is not None:
        return err
    if "at" in data:
        # filesession's {"at": "<RFC 3339, UTC>"}: Django's set_expiry(datetime).
        try:
            at = datetime.datetime.fromisoformat(data["at"])
        except (TypeError, ValueError):
            at = None
        if at is None or at.utcoffset() != datetime.timedelta(0):
            return error(400, '"at" must be an RFC 3339 time in UTC (2030-01-02T03:04:05Z).')
        request.session.set_expiry(at)
        return answer()
    if "seconds" not in data:
        return error(
            400,
            'Send {"seconds": N}: N > 0 seconds, 0 = at browser close, null = the default.',
        )
    seconds = data["seconds"]
    if seconds is None:
        request.session.set_expiry(None)
    elif _is_int(seconds) and 0 <= seconds <= U64_MAX:
        request.session.set_expiry(seconds)
    elif _is_int(seconds) or isinstance(seconds, float):
        return error(400, '"seconds" must be a whole number >= 0.')
    else:
        return error(
            400,
            'Send {"seconds": N}: N > 0 seconds, 0 = at browser close, null = the default.',
        )
    return answer()


ACTIONS = {"flush": _flush, "cycle": _cycle, "expiry": _expiry}


def named_action(action):
    """`POST /api/session/<action>`, which is also `DELETE /api/session/{name}`."""

    @csrf_exempt
    def view(request):
        if request.method == "POST":
            return ACTIONS[action](request)
        if request.method == "DELETE":
            return _delete(request, action)
        return HttpResponseNotAllowed(["POST", "DELETE"])

    return view


@csrf_exempt
def incr(request, name):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    current = request.session.get(name)
    if current is None:
        current = 0
    elif not (_is_int(current) and I64_MIN <= current <= I64_MAX):
        return error(400, f"{json.dumps(name)} does not hold an integer.")
    if current == I64_MAX:
        return error(400, f"{json.dumps(name)} is at the largest integer.")
    request.session[name] = current + 1
    return answer()
