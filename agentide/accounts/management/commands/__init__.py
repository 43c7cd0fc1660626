"""Commands: bootstrap_admin, preflight."""
