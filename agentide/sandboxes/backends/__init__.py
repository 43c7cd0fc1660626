"""Container engines behind the ``SandboxBackend`` interface (``base``)."""
