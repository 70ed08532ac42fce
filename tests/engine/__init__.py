"""Tests of ``trackssl_agent/engine/``."""
