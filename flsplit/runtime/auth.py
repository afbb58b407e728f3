"""Round tokens of the data plane: HMAC-SHA256, bound to run, round, client and helper.

The server makes one random secret per run (:func:`new_run_secret`) and never sends it.
From it, it derives one key per helper and run (:func:`helper_key`) and sends that key
only inside the helper's ``train.helper`` message. A client's round token is

    ``v1.<run>.<round>.<helper>.<mac>``,  mac = HMAC-SHA256(helper key, run|round|client|helper)

(base64url, no padding), sent only to that client. The helper checks a presented token by
recomputing the MAC for *its own* run, round and node id and the client id in the frame,
and compares with :func:`hmac.compare_digest`; the clear fields only make refusals easy
to explain (a token from last round, one for another helper). So a token is good for one
client, at one helper, in one round of one run; a helper's key lets it check tokens for
itself but not make tokens that another helper would accept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable

VERSION = "v1"
KEY_BYTES = 32
_KEY_LABEL = "flsplit.dataplane.helper-key"
_TOKEN_LABEL = "flsplit.dataplane.round-token"


def new_run_secret() -> bytes:
    """Return a fresh random per-run secret (32 bytes from :mod:`secrets`)."""
    return secrets.token_bytes(KEY_BYTES)


def _message(label: str, *fields: object) -> bytes:
    # JSON keeps the fields apart whatever characters an id contains.
    return json.dumps([label, *(str(f) for f in fields)], separators=(",", ":")).encode()


def helper_key(run_secret: bytes, run_id: int, helper: int | str) -> bytes:
    """The key that helper ``helper`` checks its clients' tokens with in run ``run_id``.

    Parameters
    ----------
    run_secret : bytes
        The server's per-run secret.
    run_id : int
        Flower run id.
    helper : int or str
        The helper's node id.

    Returns
    -------
    bytes
        32 bytes; sent to that helper only.
    """
    return hmac.new(run_secret, _message(_KEY_LABEL, run_id, helper), hashlib.sha256).digest()


def _mac(key: bytes, run_id: int, server_round: int, client: str, helper: str) -> str:
    digest = hmac.new(
        key, _message(_TOKEN_LABEL, run_id, server_round, client, helper), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_token(
    key: bytes, run_id: int, server_round: int, client: int | str, helper: int | str
) -> str:
    """Make the round token of ``client`` for ``helper``.

    Parameters
    ----------
    key : bytes
        The helper's key (:func:`helper_key`).
    run_id, server_round : int
        Flower run id and server round.
    client, helper : int or str
        Node ids of the client and its helper.

    Returns
    -------
    str
        ``v1.<run>.<round>.<helper>.<mac>``.
    """
    mac = _mac(key, run_id, server_round, str(client), str(helper))
    return f"{VERSION}.{run_id}.{server_round}.{helper}.{mac}"


class TokenVerifier:
    """Checks the round tokens presented to one helper in one round.

    Parameters
    ----------
    key : bytes
        This helper's key for the run (from its ``train.helper`` message).
    run_id, server_round : int
        The run and round being served.
    helper : int or str
        This helper's own node id.
    clients : Iterable of str
        The clients the server told this helper to serve this round.
    """

    def __init__(
        self,
        key: bytes,
        run_id: int,
        server_round: int,
        helper: int | str,
        clients: Iterable[int | str],
    ) -> None:
        if len(key) < 16:
            raise ValueError(f"token key of {len(key)} bytes is too short (at least 16)")
        self._key = bytes(key)
        self.run_id = int(run_id)
        self.server_round = int(server_round)
        self.helper = str(helper)
        self.clients = frozenset(str(c) for c in clients)
        # The MAC each served client must present, computed once per round instead of
        # once per request.
        self._expected = {
            c: _mac(self._key, self.run_id, self.server_round, c, self.helper).encode()
            for c in self.clients
        }

    def __repr__(self) -> str:  # never show the key
        return (
            f"TokenVerifier(run={self.run_id}, round={self.server_round}, helper={self.helper}, "
            f"clients={sorted(self.clients)})"
        )

    def token_for(self, client: int | str) -> str:
        """The token this helper accepts from ``client`` (for tests and benchmarks)."""
        return sign_token(self._key, self.run_id, self.server_round, client, self.helper)

    def check(self, client: str, token: str) -> str | None:
        """Return ``None`` if ``token`` admits ``client``, else why not (no secrets in it)."""
        if client not in self.clients:
            return f"client {client!r:.80} is not served by this helper this round"
        if not token:
            return f"no round token from client {client!r}"
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != VERSION:
            return f"malformed round token from client {client!r}"
        run, rnd, helper = parts[1:4]
        if run != str(self.run_id):
            return f"round token from client {client!r} is for another run"
        if rnd != str(self.server_round):
            return (
                f"round token from client {client!r} is for round {rnd:.20}, "
                f"not {self.server_round}"
            )
        if helper != self.helper:
            return f"round token from client {client!r} is for another helper ({helper:.20})"
        if not hmac.compare_digest(self._expected[client], parts[4].encode("utf-8", "replace")):
            return f"round token from client {client!r} does not verify (forged or not its own)"
        return None
