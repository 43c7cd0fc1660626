from __future__ import annotations

from typing import Any

from django import forms

from agentide.accounts.models import Team
from agentide.projects.models import Project


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True, help_text="What will use the key.")
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)

    def __init__(self, team: Team, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["project"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = Project.objects.filter(team=team).order_by("name")
