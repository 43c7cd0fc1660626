"""Quotas, the usage ledger and the alerts that keep a shared AgentIDE within its budget."""
