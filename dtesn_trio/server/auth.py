"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from dtesn_trio.errors import Unauthorized

__all__ = ["ApiKeyAuth"]


class ApiKeyAuth:
    """Checks ``Authorization: Bearer <key>`` against the configured keys.

    Every configured key is compared, whichever matches, with ``hmac.compare_digest``
    over SHA-256 digests (equal lengths): the time taken says nothing about how much of
    a key a guess got right, how long the keys are, nor which key it was close to.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(hashlib.sha256(k.encode("ascii")).digest() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None) -> None:
        """Raise ``Unauthorized`` unless ``authorization`` carries a valid key."""
        if not self._keys:
            return
        if authorization is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected Bearer <key>")
        digest = hashlib.sha256(token.strip()).digest()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(digest, key)
        if not ok:
            raise Unauthorized("invalid API key")
