"""Template tags of the event log."""
