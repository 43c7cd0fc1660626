"""Sandboxes: one hardened container per session (see the sandbox contract in DESIGN.md)."""
