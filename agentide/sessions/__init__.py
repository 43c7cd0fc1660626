"""Sessions: a team's shared notebook, one sandbox container each."""
