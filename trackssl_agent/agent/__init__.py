"""The agent at work: one cycle (fetch, probe, post through the outbox), its posters, the
composition root, the run loop, a cycle per child process and its watchdog, stop signals,
memory.

May import: ``cloud``, ``state``, ``render``, ``config``, ``verdict``, ``engine`` and the base
(``errors``, ``log``, ``base``); not ``doctor``, ``discover`` or ``cli``.
"""
