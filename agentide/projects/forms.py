from __future__ import annotations

from django import forms

from agentide.projects.models import Project
from agentide.sandboxes import conf as sandbox_conf


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

    def clean_sandbox_image(self) -> str:
        image: str = (self.cleaned_data.get("sandbox_image") or "").strip()
        if image and not sandbox_conf.image_allowed(image):
            raise forms.ValidationError(
                "This site does not allow that image. Leave the field blank for the default "
                "image, or ask a site admin to add it to AGENTIDE_SANDBOX_ALLOWED_IMAGES."
            )
        return image


class ProjectCheckpointsForm(forms.ModelForm):
    """The project's workspace checkpoint settings: on/off, ignored paths, retention."""

    class Meta:
        model = Project
        fields = [
            "checkpoints_enabled",
            "checkpoint_ignored_paths",
            "checkpoint_keep_last",
            "checkpoint_keep_days",
        ]
        widgets = {"checkpoint_ignored_paths": forms.Textarea(attrs={"rows": 6})}

    def clean_checkpoint_ignored_paths(self) -> str:
        text: str = self.cleaned_data.get("checkpoint_ignored_paths") or ""
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
