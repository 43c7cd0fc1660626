"""Projects: a team's workspaces, with sandbox and (later) model settings."""
