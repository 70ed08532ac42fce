"""Configuration: the settings table (each setting's key, option, default, bounds),
environment.txt, the merged and validated frozen Config, and Secret.

May import: ``engine`` and the base (``errors``, ``log``, ``base``); nothing else of the
package.
"""
