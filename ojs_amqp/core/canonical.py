"""Canonical JSON for fingerprints: RFC 8785 (JCS) over NFC-normalised strings.

`rfc8785` does the parts that are easy to get subtly wrong by hand: numbers in the
ECMAScript form JCS prescribes (`1.0` -> `1`, `1e21`, `1e-7`), JSON.stringify's string
escapes, and object keys ordered by their UTF-16 code units (not code points, which differ
above U+FFFF). This module adds what JCS leaves to the caller: every string, object keys
included, is NFC-normalised first (ojs-unique-jobs §4.2), and a value JCS cannot represent
exactly is refused with its path instead of being rounded into a false duplicate.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from typing import Any

import rfc8785

from ojs_amqp.errors import InvalidRequest

#: I-JSON's exact integer range (RFC 7493 §2.2), which RFC 8785 numbers live in: a larger
#: integer would be rounded to a double, so two different ids could share a fingerprint.
SAFE_INTEGER = 2**53 - 1


def canonical_bytes(value: Any, where: str) -> bytes:
    """The RFC 8785 serialisation of `value` after NFC normalisation; InvalidRequest (400)
    naming the offending path (`where` is the path of `value` itself)."""
    normalised = _normalise(value, where)
    try:
        return rfc8785.dumps(normalised)
    except rfc8785.CanonicalizationError as exc:  # defensive: _normalise refuses these first
        raise InvalidRequest(f"{where}: {exc}", details={"field": where}) from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _normalise(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _nfc(value, where)
    if isinstance(value, int):
        if not -SAFE_INTEGER <= value <= SAFE_INTEGER:
            raise _refuse(
                where,
                f"{value} is outside the exact integer range of JSON numbers (±2^53-1), "
                "so it cannot be fingerprinted without rounding; send it as a string",
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(where, "NaN and infinities have no JSON form")
        return value
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return _normalise_object(value, where)
    raise _refuse(where, f"a {type(value).__name__} is not a JSON value")


def _normalise_object(value: dict[Any, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _refuse(where, "object keys must be strings")
        nfc_key = _nfc(key, where)
        if nfc_key in out:
            raise _refuse(
                where,
                f"two keys are the same text after Unicode NFC normalisation ({nfc_key!r})",
            )
        out[nfc_key] = _normalise(item, f"{where}.{key}")
    return out


def _nfc(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(where, "a string holds a lone surrogate, which is not Unicode text") from None
    return unicodedata.normalize("NFC", text)


def _refuse(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {why}", details={"field": where})
