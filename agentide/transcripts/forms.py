"""Forms of the transcript pages."""

from __future__ import annotations

from typing import Any

from django import forms

from agentide.projects.models import Project


class ImportForm(forms.Form):
    """Upload a JSONL transcript into one of the team's projects."""

    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    title = forms.CharField(
        max_length=110, required=False, help_text="Blank keeps the transcript's own title."
    )
    file = forms.FileField(help_text="A .jsonl transcript exported from AgentIDE.")

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]


class BundleImportForm(ImportForm):
    """A transcript with its checkpoint bundle (docs/checkpoints.md)."""

    checkpoints = forms.FileField(
        help_text="The .checkpoints.tar exported with it: the session's files at every "
        "cell, for diffs and for forks that start from the right files.",
    )


class ForkForm(forms.Form):
    """Where a fork replays: one of the team's projects (its model runs the prompts)."""

    project = forms.ChoiceField(help_text="The later prompts run against this project's model.")
    title = forms.CharField(
        max_length=120, required=False, help_text="Blank names the fork after the session."
    )

    def __init__(self, *args: Any, targets: list[tuple[Project, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].choices = [(p.pk, label) for p, label in targets]  # type: ignore[attr-defined]
