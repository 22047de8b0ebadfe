"""Bulk checks under /o/<org_slug>/checks/bulk/. Every view carries `org_member_required`."""

urlpatterns: list = []
