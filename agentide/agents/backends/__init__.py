"""Model backends: the seam between the turn loop and a model provider's API."""
