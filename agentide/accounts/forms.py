from __future__ import annotations

from django import forms

from agentide.accounts.models import Role


class TeamForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True)


class AddMemberForm(forms.Form):
    identifier = forms.CharField(label="Username or email", max_length=254, strip=True)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
