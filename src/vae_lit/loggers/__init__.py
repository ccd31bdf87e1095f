"""Loggers the `logger` config group builds, and pictures sent to them."""
