"""Tests of ``trackssl_agent/config/``."""
