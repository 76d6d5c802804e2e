"""Orchestration: the loops and workflows that drive the domain through the ports."""
