"""Chat under /o/<org_slug>/chat/. Every view carries `org_member_required`."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.chat_home, name="chat_home"),
    path("new/", views.thread_new, name="chat_thread_new"),
    path("threads/", views.thread_sidebar, name="chat_sidebar"),
    path("t/<int:thread_id>/", views.thread_detail, name="chat_thread"),
    path("t/<int:thread_id>/send/", views.message_create, name="chat_send"),
    path("t/<int:thread_id>/regenerate/", views.message_regenerate, name="chat_regenerate"),
    path("t/<int:thread_id>/edit/", views.message_edit, name="chat_edit"),
    path("t/<int:thread_id>/title/", views.thread_title, name="chat_thread_title"),
    path("t/<int:thread_id>/rename/", views.thread_rename, name="chat_rename"),
    path("t/<int:thread_id>/pin/", views.thread_pin, name="chat_pin"),
    path("t/<int:thread_id>/delete/", views.thread_delete, name="chat_delete"),
    path("m/<int:message_id>/", views.message_detail, name="chat_message"),
    path("m/<int:message_id>/events/", views.message_stream, name="chat_stream"),
    path("m/<int:message_id>/stop/", views.message_stop, name="chat_stop"),
    path("files/<str:token>/", views.attachment_download, name="chat_file"),
]
