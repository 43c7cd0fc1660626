from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from agentide.agents.models import (
    ModelProvider,
    base_url_allowed,
    literal_address_allowed,
    site_key_allowed,
)


class ModelProviderForm(forms.ModelForm):
    """Provider settings. The API key field is write-only: it is never rendered back."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        max_length=500,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted; leave blank to keep the stored key.",
    )
    forget_api_key = forms.BooleanField(label="Forget the stored key", required=False)

    class Meta:
        model = ModelProvider
        fields = [
            "kind",
            "base_url",
            "model",
            "api_key_env",
            "stores_responses",
            "context_window",
            "context_budget_percent",
            "price_input",
            "price_cached_input",
            "price_output",
            "max_steps",
            "instructions",
        ]
        widgets = {"instructions": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = ", ".join(settings.AGENTIDE_MODEL_KEY_VARS) or "none"
        self.fields["api_key_env"].help_text = f"Allowed by this site: {allowed}."
        for name in ("price_input", "price_cached_input", "price_output"):
            self.fields[name].help_text = (
                "Applies to the key your team stores; the site prices its own keys."
            )

    def clean_base_url(self) -> str:
        url: str = self.cleaned_data["base_url"]
        if url and not base_url_allowed(url):
            raise forms.ValidationError("This site does not allow model requests to that host.")
        if url and not literal_address_allowed(url):
            raise forms.ValidationError(
                "This site does not allow model requests to loopback, private, link-local or "
                "metadata addresses."
            )
        return url

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("api_key_env") and not site_key_allowed(data.get("base_url") or ""):
            hosts = ", ".join(settings.AGENTIDE_MODEL_KEY_HOSTS) or "none"
            self.add_error(
                "api_key_env",
                f"This site sends its own keys only to {hosts}: "
                "store your team's API key for this base URL instead.",
            )
        return data

    def clean_api_key_env(self) -> str:
        name: str = self.cleaned_data["api_key_env"]
        if name and name not in settings.AGENTIDE_MODEL_KEY_VARS:
            raise forms.ValidationError(
                "This site does not allow that variable as an API key source."
            )
        return name
