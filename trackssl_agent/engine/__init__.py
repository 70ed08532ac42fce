"""The probe engine: a target in, a result out within one deadline. Targets and the protocol table,
the STARTTLS dialogues, the connection and the handshake, results and certificate summaries, the
worker pool, TRACKSSL_ALLOW. It takes values (a timeout, a concurrency), not settings.

May import: the base (``errors``, ``log``, ``base``); nothing else of the package.
"""
