"""`user_deactivated`: sent once when a user's `is_active` goes from True to False (the admin, a
shell, any `save()`), and when a user is deleted, so other apps can withdraw what the person held
(tenants revokes their API keys). A queryset `update()` bypasses it: readers of a user's rights
check `is_active` themselves."""

from __future__ import annotations

from django.db.models.signals import post_save, pre_delete, pre_save
from django.dispatch import Signal, receiver

from .models import User

user_deactivated = Signal()  # kwargs: user


@receiver(pre_save, sender=User)
def _note_deactivation(sender, instance: User, update_fields=None, **kwargs) -> None:
    instance._deactivating = (
        instance.pk is not None and not instance.is_active
        and (update_fields is None or "is_active" in update_fields)
        and User.objects.filter(pk=instance.pk, is_active=True).exists()
    )


@receiver(post_save, sender=User)
def _send_deactivated(sender, instance: User, **kwargs) -> None:
    if getattr(instance, "_deactivating", False):
        instance._deactivating = False
        user_deactivated.send(sender=User, user=instance)


@receiver(pre_delete, sender=User)
def _send_deleted(sender, instance: User, **kwargs) -> None:
    user_deactivated.send(sender=User, user=instance)
