"""Who may send: API tokens (signatures and OAuth come with their own issue)."""

from streamd.auth.tokens import (
    TokenSet,
    ensure_token_file,
    loose_permissions,
    read_token_file,
    token_from_request,
)

__all__ = [
    "TokenSet",
    "ensure_token_file",
    "loose_permissions",
    "read_token_file",
    "token_from_request",
]
