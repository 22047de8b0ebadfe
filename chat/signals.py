"""A deleted account takes its conversations and files with it, in every organization."""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django_tenants.utils import schema_context

from tenants.models import Membership

from .models import Attachment, Thread
from .services import thread_delete


@receiver(pre_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="chat_user_delete")
def user_chat_delete(sender, instance, **kwargs) -> None:
    schemas = Membership.objects.filter(user=instance).values_list("organization__schema_name", flat=True)
    for schema in schemas:
        with schema_context(schema):
            for thread in Thread.objects.filter(user_id=instance.pk):
                thread_delete(thread=thread)
            storage = Attachment._meta.get_field("file").storage
            for attachment in Attachment.objects.filter(uploaded_by_id=instance.pk):
                storage.delete(attachment.file.name)
                attachment.delete()
