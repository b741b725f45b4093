"""agentcluster."""
