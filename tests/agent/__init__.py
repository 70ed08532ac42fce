"""Tests of ``trackssl_agent/agent/``."""
