"""Intake: routing rules and series stability (when a series is complete, which jobs it starts)."""
