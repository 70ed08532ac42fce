"""Tests of ``trackssl_agent/verdict/``."""
