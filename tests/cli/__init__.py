"""Tests of ``trackssl_agent/cli/``: the command group, ``probe``, completion."""
