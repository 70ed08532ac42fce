"""``Secret``: a value that cannot print itself and must be revealed by name where it is sent.

Creating a Secret also registers its value with ``log``'s redaction filter, the second line
of defence: text that got hold of the raw value some other way is still masked in the logs.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from trackssl_agent import log


class Secret:
    """A token or password: masked in ``repr``, ``str``, f-strings and ``%s``; refused by
    ``json.dumps`` and ``pickle``. ``reveal()`` is the one way to the raw value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        log.register_secret(value)

    def reveal(self) -> str:
        """The raw value: call it only where the value is sent (an Authorization header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({log.REDACTED})"

    def __str__(self) -> str:
        return log.REDACTED

    def __format__(self, spec: str) -> str:
        return format(log.REDACTED, spec)

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time: a comparison must not tell how much of a guess was right.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, _memo: object) -> Secret:
        # dataclasses.asdict and replace deep-copy fields; the value must not be re-read.
        return self

    def __reduce__(self) -> NoReturn:
        # Pickling would write the raw value to wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled; reveal() it where it is sent")
