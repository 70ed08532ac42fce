"""Tests of the frozen builds and of the packaging inputs under ``build/``."""
