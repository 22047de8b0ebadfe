from django.urls import path

from . import views

urlpatterns = [
    path("profile/", views.profile, name="account_profile"),
    path("theme/", views.theme_set, name="account_theme"),
]
