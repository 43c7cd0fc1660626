"""Schema history of the projects app."""
