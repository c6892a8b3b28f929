"""The ``rlprune`` command and the embedded default: API and one worker on SQLite, no external services."""
