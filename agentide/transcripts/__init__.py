"""Transcripts: read, search, comment on, export, import, fork and replay a session's log."""
