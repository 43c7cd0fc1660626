from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from agentide.accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("teams/new/", views.team_create, name="team_create"),
    path("t/<slug:team_slug>/", views.team_detail, name="team_detail"),
    path("t/<slug:team_slug>/members/", views.member_add, name="member_add"),
    path(
        "t/<slug:team_slug>/members/<int:membership_id>/role/",
        views.member_role,
        name="member_role",
    ),
    path(
        "t/<slug:team_slug>/members/<int:membership_id>/remove/",
        views.member_remove,
        name="member_remove",
    ),
    path("t/<slug:team_slug>/leave/", views.team_leave, name="team_leave"),
]
