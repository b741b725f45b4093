"""Helpers for runtime tests: bounded polling instead of fixed sleeps."""

from agentcluster.testing.waiting import eventually, stays

__all__ = ["eventually", "stays"]
