"""The TrackSSL API: the client (retries, errors), the schema (domain list -> values, result ->
payload; pure) and the transports (kept-alive connections; a requests session through a proxy).

May import: ``engine``, ``config.secret``, ``config.settings`` and the base (``errors``,
``log``, ``base``); nothing else of the package.
"""
