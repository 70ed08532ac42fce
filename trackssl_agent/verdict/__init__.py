"""The verdict on a probe result, judged offline from what the target presented: the trust store,
the chain checks, the judge, and local mode (probe and judge, in input order).

May import: ``engine`` and the base (``errors``, ``log``, ``base``); nothing else of the
package.
"""
