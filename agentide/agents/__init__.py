"""Agents: a model drives a session's shell (provider settings, turn loop, model backends)."""
