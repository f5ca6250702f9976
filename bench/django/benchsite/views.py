"""The classic example (setsession / getsession) and a counter that changes every request."""
from django.http import HttpResponse, HttpResponseNotFound, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def setsession(request):
    request.session["sname"] = "abc"
    request.session["semail"] = "abc@gmail.com"
    return HttpResponse("session is set")


def getsession(request):
    try:
        return HttpResponse(request.session["sname"] + " " + request.session["semail"])
    except KeyError:
        return HttpResponseNotFound("visit /setsession/ first")


@csrf_exempt
def incr(request, name):
    request.session[name] = request.session.get(name, 0) + 1
    return JsonResponse({"data": dict(request.session.items())})
