"""Tests of ``trackssl_agent/doctor/``."""
