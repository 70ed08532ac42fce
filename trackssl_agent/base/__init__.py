"""What ``log`` and every part build on, below ``log`` and above ``errors``: redaction of secrets,
the log file opened safely, numbers and dates from outside read as ASCII, user names for
messages.

May import: ``errors``; nothing else of the package (``log`` imports it).
"""
