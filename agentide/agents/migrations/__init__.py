"""Schema history of the agents app."""
