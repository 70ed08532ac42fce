"""Tests of ``trackssl_agent/cloud/``."""
