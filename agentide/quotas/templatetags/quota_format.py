from __future__ import annotations

from decimal import Decimal

from django import template

from agentide.quotas.services import LimitUse, format_amount

register = template.Library()


@register.filter
def used(use: LimitUse) -> str:
    """This month's use of a limit in its unit ("1,234" tokens, "$1.20", "0.50" hours)."""
    return format_amount(use.limit, use.used)


@register.filter
def allowed(use: LimitUse) -> str:
    return format_amount(use.limit, use.allowed if use.allowed is not None else Decimal(0))
