from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from agentide.accounts.models import Membership
from agentide.api import keys
from agentide.api.models import ApiContainer, ApiKey, ContainerFile
from agentide.lib.admin import ReadOnlyAdmin


class ApiKeyAddForm(forms.ModelForm):
    """A new key: its project, name, and the member it acts as (who must be able to write in
    the project's team). The secret is made on save and shown once."""

    class Meta:
        model = ApiKey
        fields = ["project", "name", "created_by"]
        labels = {"created_by": "Acts as"}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        project, user = data.get("project"), data.get("created_by")
        if project is not None and user is not None:
            membership = Membership.objects.filter(team=project.team_id, user=user).first()
            if membership is None or not membership.can_write:
                raise ValidationError(
                    {"created_by": f"{user} is not a member of team {project.team} who may "
                                   "write (reviewers and outsiders cannot hold keys)."}
                )
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "team", "project", "created_by", "created_at",
                    "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "team__name", "project__name")
    list_select_related = ("team", "project", "created_by")
    readonly_fields = ("team", "project", "created_by", "prefix", "created_at", "last_used_at",
                       "revoked_at", "revoked_by")
    fields = ("name", "team", "project", "created_by", "prefix", "created_at", "last_used_at",
              "revoked_at", "revoked_by")
    actions = ["revoke"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False,
                 **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("project", "name", "created_by") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, secret = keys.create_key(obj.created_by, project=obj.project, name=obj.name)
        obj.pk, obj.prefix, obj.team_id = key.pk, key.prefix, key.team_id
        obj.new_secret = secret  # type: ignore[attr-defined]  # read once by response_add

    def response_add(self, request: HttpRequest, obj: ApiKey,
                     post_url_continue: str | None = None) -> HttpResponse:
        """The new key's secret, on this response only (it is stored nowhere)."""
        context = {**self.admin_site.each_context(request), "key": obj,
                   "secret": getattr(obj, "new_secret", ""), "opts": self.opts,
                   "title": "API key created"}
        response = TemplateResponse(request, "api/admin_key_created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for key in queryset:
            keys.revoke_key(key, by=request.user)  # type: ignore[arg-type]
        self.message_user(request, "Revoked. Requests with these keys now answer 401.")


@admin.register(ApiContainer)
class ApiContainerAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "name", "session", "key", "status", "last_active_at")
    list_filter = ("status",)
    search_fields = ("public_id", "name")


@admin.register(ContainerFile)
class ContainerFileAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "path", "container", "bytes", "source", "created_at")
    search_fields = ("public_id", "path")
