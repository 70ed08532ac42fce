"""``doctor``: every check between "installed" and "a cycle works", in order (the checkup), each
one line, rendered as text or JSON.

May import: ``cloud``, ``state``, ``render``, ``config``, ``verdict``, ``engine`` and the base
(``errors``, ``log``, ``base``); not ``agent``, ``discover`` or ``cli``.
"""
