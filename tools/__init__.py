"""Technician and operator tools: the `fengqiao` command line."""
