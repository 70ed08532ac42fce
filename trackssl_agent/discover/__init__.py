"""``discover``: NETWORK and ``--ports`` to a scan plan within the limits and TRACKSSL_ALLOW
(address spans, never lists), the paced scan, its output.

May import: ``cloud``, ``state``, ``render``, ``config``, ``verdict``, ``engine`` and the base
(``errors``, ``log``, ``base``); not ``agent``, ``doctor`` or ``cli``.
"""
