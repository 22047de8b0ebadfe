"""A deleted account takes its conversations and files with it, in every organization; a change to
what the per-process snapshots hold (chat.snapshot) tells every process to rebuild."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete
from django.dispatch import receiver
from django_tenants.utils import schema_context

from billing.models import BillingAccount, Plan, Price
from tenants.audit.services import Actor
from tenants.models import Membership

from .catalog.models import Model, ModelAlias, ProviderKey
from .models import Attachment, Thread
from .services import thread_delete
from .snapshot import org_config_bump


@receiver(pre_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="chat_user_delete")
def user_chat_delete(sender, instance, **kwargs) -> None:
    schemas = Membership.objects.filter(user=instance).values_list("organization__schema_name", flat=True)
    for schema in schemas:
        with schema_context(schema):
            for thread in Thread.objects.filter(user_id=instance.pk):
                thread_delete(thread=thread, actor=Actor.system("account deleted"))
            storage = Attachment._meta.get_field("file").storage
            for attachment in Attachment.objects.filter(uploaded_by_id=instance.pk):
                storage.delete(attachment.file.name)
                attachment.delete()


def _config_changed(sender, **kwargs) -> None:
    # After the commit: a process rebuilding before it would read the old rows again.
    transaction.on_commit(org_config_bump)


# What the per-process snapshots hold (chat.snapshot.OrgConfig).
for _model in (Model, ModelAlias, ProviderKey, Plan, Price, BillingAccount):
    post_save.connect(_config_changed, sender=_model, dispatch_uid=f"gateway_config_{_model.__name__}_save")
    post_delete.connect(_config_changed, sender=_model, dispatch_uid=f"gateway_config_{_model.__name__}_delete")
