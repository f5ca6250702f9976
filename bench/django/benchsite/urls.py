from django.urls import path

from . import views

urlpatterns = [
    path("setsession/", views.setsession),
    path("getsession/", views.getsession),
    path("incr/<str:name>", views.incr),
]
