from __future__ import annotations

from django import forms

from agentide.projects.models import Project


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True)
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=2000
    )


class ProjectSettingsForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = [
            "name",
            "description",
            "sandbox_image",
            "sandbox_memory_mb",
            "sandbox_cpus",
            "sandbox_pids_limit",
            "sandbox_tmp_mb",
            "sandbox_disk_mb",
            "command_timeout_s",
        ]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
