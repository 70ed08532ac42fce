"""Tests of ``trackssl_agent/render/``."""
