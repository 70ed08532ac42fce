"""The state dir: a folder nobody else can plant in, the one-agent lock, the write-ahead outbox
with its segment files and record format, and StateDir (the lock held, an outbox per cycle).

May import: the base (``errors``, ``log``, ``base``); nothing else of the package.
"""
