"""The OpenAI-compatible API at /v1/."""

from django.urls import path

from . import views_v1

urlpatterns = [
    path("models", views_v1.models, name="v1_models"),
    path("chat/completions", views_v1.chat_completions, name="v1_chat_completions"),
]
