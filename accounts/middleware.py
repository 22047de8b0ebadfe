from __future__ import annotations

from django.utils import translation

from config.observability import user_var


class UserLanguageMiddleware:
    """A signed-in user's saved language wins over the browser's; tags logs with the user."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            user_var.set(str(user.pk))
            if user.language and user.language != translation.get_language():
                translation.activate(user.language)
                request.LANGUAGE_CODE = translation.get_language()
        return self.get_response(request)
