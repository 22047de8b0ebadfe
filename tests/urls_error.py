"""The project's URLs plus one view that fails, for the tests of what a server error produces."""

from django.urls import path

from config.urls import urlpatterns as project_urlpatterns


def fail(request):
    raise RuntimeError("forced failure for the error-reporting tests")


urlpatterns = [path("tests/fail", fail), *project_urlpatterns]

handler500 = "config.views.server_error"
