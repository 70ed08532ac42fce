"""A minimal DER editor for building certificates that strict parsers reject.

Only what the tests need: split a constructed value into (tag, content) pairs and
re-encode them, so that fields of a real certificate can be replaced or duplicated.
The signature is left as it was: the agent never verifies it, so it does not matter.
"""

from __future__ import annotations

from collections.abc import Callable

Item = tuple[int, bytes]


def children(content: bytes) -> list[Item]:
    """The (tag, content) pairs inside a constructed value's content."""
    items: list[Item] = []
    index = 0
    while index < len(content):
        tag = content[index]
        length = content[index + 1]
        index += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(content[index : index + size], "big")
            index += size
        items.append((tag, content[index : index + length]))
        index += length
    return items


def encode(tag: int, content: bytes) -> bytes:
    """One TLV with a definite length."""
    length = len(content)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(raw)]) + raw
    return header + content


def join(items: list[Item]) -> bytes:
    """Concatenated TLVs."""
    return b"".join(encode(tag, content) for tag, content in items)


def edit_tbs(der: bytes, edit: Callable[[list[Item]], list[Item]]) -> bytes:
    """Return ``der`` with the tbsCertificate's fields passed through ``edit``."""
    ((_, certificate),) = children(der)
    parts = children(certificate)
    tbs_fields = edit(children(parts[0][1]))
    return encode(0x30, encode(0x30, join(tbs_fields)) + join(parts[1:]))


def negative_serial(der: bytes) -> bytes:
    """The certificate with serial number -123 (RFC 5280 forbids negatives)."""

    def edit(fields: list[Item]) -> list[Item]:
        fields[1] = (0x02, b"\x85")
        return fields

    return edit_tbs(der, edit)


def duplicate_extensions(der: bytes) -> bytes:
    """The certificate with its last extension repeated (RFC 5280 forbids duplicates)."""

    def edit(fields: list[Item]) -> list[Item]:
        for index, (tag, content) in enumerate(fields):
            if tag == 0xA3:
                ((_, extensions),) = children(content)
                items = children(extensions)
                items.append(items[-1])
                fields[index] = (tag, encode(0x30, join(items)))
        return fields

    return edit_tbs(der, edit)


def bad_not_after(der: bytes) -> bytes:
    """The certificate with a notAfter of month 13."""

    def edit(fields: list[Item]) -> list[Item]:
        not_before, _ = children(fields[4][1])
        fields[4] = (0x30, join([not_before, (0x17, b"991340000000Z")]))
        return fields

    return edit_tbs(der, edit)


def garbage() -> bytes:
    """Not a certificate at all."""
    return encode(0x30, b"\x01\x02\x03")


def invalid_utf8_subject(der: bytes) -> bytes:
    """The certificate with a subject CN whose UTF8String is not UTF-8 (OpenSSL rejects it
    while decoding the Certificate message: ``ASN1 lib``)."""

    def edit(fields: list[Item]) -> list[Item]:
        common_name = encode(0x06, bytes([0x55, 0x04, 0x03])) + encode(0x0C, b"bad \xff\xfe name")
        fields[5] = (0x30, encode(0x31, encode(0x30, common_name)))
        return fields

    return edit_tbs(der, edit)


def control_characters_subject(der: bytes) -> bytes:
    """The certificate with a subject CN holding CR, LF and an ESC sequence (valid UTF-8, so
    every parser accepts it, and a terminal would act on it)."""

    def edit(fields: list[Item]) -> list[Item]:
        value = b"evil\r\n\x1b[31mred\x1b[0m"
        common_name = encode(0x06, bytes([0x55, 0x04, 0x03])) + encode(0x0C, value)
        fields[5] = (0x30, encode(0x31, encode(0x30, common_name)))
        return fields

    return edit_tbs(der, edit)
