"""Exports of a simulated model for deployment and hardware (issue 13)."""
