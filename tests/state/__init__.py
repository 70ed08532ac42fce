"""Tests of ``trackssl_agent/state/``."""
