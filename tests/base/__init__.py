"""Tests of ``trackssl_agent/base/``."""
