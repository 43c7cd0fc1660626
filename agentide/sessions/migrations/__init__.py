"""Schema history of the notebook (sessions) app."""
