"""Django admin bases shared by the apps."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through the services: operators look (and may delete where the
    subclass allows), they never add or edit."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class AppendOnlyAdmin(ReadOnlyAdmin):
    """Records of what happened (the log, the usage ledger): not even deleted by hand."""

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
