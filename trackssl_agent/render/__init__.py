"""What the commands show: text, JSON and PEM, OpenMetrics (and Nagios), ``--output`` replaced
atomically, and the exit-code authority (``report``).

May import: ``verdict``, ``engine`` and the base (``errors``, ``log``, ``base``); nothing else
of the package.
"""
