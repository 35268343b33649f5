"""Authentication glue: accounts are created by operators (CLI, admin, SSO), not by self sign-up."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest


class NoSignupAccountAdapter(DefaultAccountAdapter):
    """Close self sign-up: an operator creates users."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        """Self sign-up is closed."""
        return False
