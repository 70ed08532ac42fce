"""Tests of ``trackssl_agent/discover/``."""
