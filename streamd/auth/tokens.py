"""API tokens: loading, generating, and constant-time checking.

A token file holds one token per line (several lines: rotation); blank lines
and lines starting with ``#`` are ignored. Tokens are compared with
``hmac.compare_digest`` against every configured token, so the time taken
does not tell which one (or how much of one) matched.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl

from streamd.errors import ConfigError
from streamd.fsutil import atomic_write

MAX_TOKEN_FILE_BYTES = 64 * 1024
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 512


def read_token_file(path: str) -> list[str]:
    """Read the tokens of one file.

    Raises :class:`ConfigError` naming the file (and line) when it is
    missing, too large, not text, or holds a token that is too short.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{path}: token file larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: token file is not ASCII text") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not token.isprintable() or any(c.isspace() for c in token):
            raise ConfigError(f"{path}:{number}: a token must be printable, without spaces")
        if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
            raise ConfigError(
                f"{path}:{number}: a token must have {MIN_TOKEN_LENGTH} to "
                f"{MAX_TOKEN_LENGTH} characters"
            )
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"{path}: the token file holds no token")
    return tokens


def ensure_token_file(path: str) -> str | None:
    """Create ``path`` with a new random token (mode 0600) unless it exists.

    Returns the new token when one was generated (to print once), else None.
    Written to a temporary file, fsynced, then renamed, so a crash never
    leaves an empty token file behind. Raises :class:`ConfigError`.
    """
    if os.path.exists(path):
        return None
    # A fixed prefix: recognisable in logs and secret scanners, and never starts with "-".
    token = "sd_" + secrets.token_urlsafe(32)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        atomic_write(path, (token + "\n").encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the token file: {exc.strerror}") from None
    return token


def loose_permissions(path: str) -> bool:
    """True when a token file can be read by group or others."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


class TokenSet:
    """The tokens one source accepts, checked in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens: Sequence[bytes] = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ConfigError("a token source needs at least one token")

    def check(self, candidate: str | bytes | None) -> bool:
        """True when ``candidate`` equals one of the tokens."""
        if not candidate:
            return False
        value = candidate.encode() if isinstance(candidate, str) else candidate
        matched = False
        for token in self._tokens:  # no early exit: timing reveals nothing
            matched |= hmac.compare_digest(token, value)
        return matched


def token_from_request(
    authorization: bytes | None, query_string: bytes, *, allow_query: bool
) -> bytes | None:
    """Extract the presented token: ``Bearer <t>``, a bare ``<t>``, or ``?access_token=<t>``."""
    if authorization:
        value = authorization.strip()
        scheme, _, rest = value.partition(b" ")
        if rest and scheme.lower() == b"bearer":
            return rest.strip()
        return value
    if allow_query and b"access_token=" in query_string:
        try:
            fields = parse_qsl(query_string.decode("latin-1"), max_num_fields=50)
        except ValueError:  # too many fields: hostile, answer 401
            return None
        for name, token in fields:
            if name == "access_token":
                return token.encode("latin-1")
    return None
