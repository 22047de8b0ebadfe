"""The anonymous trial, at /try."""

from django.urls import path

from . import views_trial

urlpatterns = [
    path("", views_trial.trial_page, name="trial"),
    path("m/<int:answer_id>/", views_trial.trial_message, name="trial_message"),
    path("m/<int:answer_id>/events/", views_trial.trial_stream, name="trial_stream"),
]
