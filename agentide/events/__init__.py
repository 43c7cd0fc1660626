"""The event log: every session's append-only history, its vocabulary and its publisher."""
