"""Migrations of the event log (label events)."""
