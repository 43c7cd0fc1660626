"""The in-container runner; ``runner.py`` is copied into the sandbox image as-is."""
