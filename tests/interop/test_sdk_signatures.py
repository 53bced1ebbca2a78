"""Adobe's SDK (``@adobe/aio-lib-events`` 4.1.0) verifies what ``streamd emit`` signs.

``streamd emit --mode io`` delivers to a loopback receiver that keeps the raw bytes and
headers (and fetches the emulator's public keys while it runs, as a receiver fetches
Adobe's). The SDK then verifies them in node, its key host pointed at a loopback key
server by a ``node -r`` preload, its key cache (aio-lib-state) at a loopback stand-in
by the library's own ``AIO_STATE_ENDPOINT``. The negative cases show the suite fails
when the emulator or a receiver gets it wrong.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from streamd.emit.generate import id_fields_on
from tests.conftest import FIXTURES
from tests.system._harness import Processes, free_port, streamd_argv

from ._sdk import KeyHost, Node, Receiver, StateStore, delivery_input, serving

# Under pytest-xdist these tests share one worker, beside the journal tests' one.
pytestmark = pytest.mark.xdist_group("interop-signatures")

CLIENT_ID = "interop-client"
NOT_RECIPIENT = "Unable to authenticate, not a valid target recipient"


def emit_deliveries(
    processes: Processes, *, fields: str | None, count: int = 16, batch: int = 1
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Run ``streamd emit`` into a receiver; the deliveries and the public keys by path.

    ``fields``: the ``--id-fields`` to give, or None for the default (the day's)."""
    key_port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{key_port}")
    size = ["--batch", "1", "--single"] if batch == 1 else ["--batch", str(batch)]
    with serving(receiver) as url:
        emit = processes.spawn(
            [
                *streamd_argv(),
                "emit",
                "--mode=io",
                "--shape=mixed",
                f"--to={url}/hook",
                f"--count={count}",
                *size,
                "--unpaced",
                f"--recipient={CLIENT_ID}",
                *([f"--id-fields={fields}"] if fields else []),
                f"--key-server=127.0.0.1:{key_port}",
                "--progress=0",
                "--json",
            ],
            f"emit-{fields or 'default'}",
        )
        assert emit.wait(60) == 0, emit.stderr()
    summary = json.loads(emit.stdout())
    assert summary["events_acked"] == count
    assert summary["id_fields"] == (fields or id_fields_on(_utc_today()))
    assert len(receiver.deliveries) == count // batch and len(receiver.keys) == 2
    return receiver.deliveries, receiver.keys


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def sdk_verify(
    node: Node,
    keys: dict[str, bytes],
    deliveries: list[dict[str, Any]],
    recipient: str = CLIENT_ID,
) -> tuple[list[dict[str, Any]], KeyHost, StateStore]:
    """The SDK's verdicts on ``deliveries`` (inputs of :func:`delivery_input`)."""
    key_host, state = KeyHost(keys=dict(keys)), StateStore()
    with serving(key_host) as key_url, serving(state) as state_url:
        state.url = state_url
        out = node.run(
            "verify_signatures.js",
            {"recipient": recipient, "deliveries": deliveries},
            env={"INTEROP_KEY_HOST": key_url, **state.env()},
            preload=True,
            timeout=120,
        )
    results: list[dict[str, Any]] = out["results"]
    assert len(results) == len(deliveries)
    return results, key_host, state


def tampered(body: bytes) -> bytes:
    """``body`` with one character of its first event id changed (still valid JSON)."""
    at = body.index(b'"eventid":"') + len(b'"eventid":"') + 35  # the id's last character
    return body[:at] + (b"0" if body[at : at + 1] != b"0" else b"1") + body[at + 1 :]


def test_the_sdks_own_test_vector_passes_through_the_stand_ins(node: Node) -> None:
    """The harness itself: the SDK accepts its own test vector, fetches the key from the
    loopback key host once and caches it in the state stand-in."""
    vector = json.loads((FIXTURES / "signature_vector.json").read_text())
    path = "/prod/keys/pub-key-vector.pem"
    body = vector["body"].encode()
    good = {"headers": _signed_headers(vector["valid_signature"], path), "body": body}
    bad = {"headers": _signed_headers(vector["invalid_signature"], path), "body": body}
    results, key_host, state = sdk_verify(
        node,
        {path: vector["public_key_pem"].encode()},
        [delivery_input(good), delivery_input(bad)],
        recipient=vector["client_id"],
    )
    assert results[0] == {"event": True, "event_reason": None, "signature": True}
    assert results[1]["event"] is False and results[1]["signature"] is False
    # One fetch from the key host; every other look-up hit the cache.
    assert key_host.requests == [path]
    assert ("PUT", "pub-key-vector.pem") in state.requests
    assert state.values["pub-key-vector.pem"] == vector["public_key_pem"].encode()


def _signed_headers(signature: str, path: str) -> dict[str, str]:
    return {
        "x-adobe-digital-signature-1": signature,
        "x-adobe-digital-signature-2": signature,
        "x-adobe-public-key1-path": path,
        "x-adobe-public-key2-path": path,
    }


def test_the_sdk_accepts_emits_single_deliveries_and_refuses_tampered_ones(
    processes: Processes, node: Node
) -> None:
    deliveries, keys = emit_deliveries(processes, fields="both")
    inputs = [delivery_input(d) for d in deliveries]
    inputs += [delivery_input(d, tampered(d["body"])) for d in deliveries]
    results, key_host, state = sdk_verify(node, keys, inputs)
    genuine, forged = results[:16], results[16:]
    assert genuine == [{"event": True, "event_reason": None, "signature": True}] * 16
    assert forged == [{"event": False, "event_reason": "signature", "signature": False}] * 16
    # Each of the emulator's two keys came from the key host once, then from the cache.
    assert sorted(key_host.requests) == sorted(keys)
    assert {k for m, k in state.requests if m == "PUT"} == {p.rsplit("/", 1)[1] for p in keys}


def test_by_default_emit_sends_what_adobe_sends_on_the_day(
    processes: Processes, node: Node
) -> None:
    """Until the end of 2026 the SDK accepts the default deliveries; from 2027 on it
    refuses them, as it would refuse Adobe's own (then without recipient_client_id)."""
    deliveries, keys = emit_deliveries(processes, fields=None, count=4)
    results, _, _ = sdk_verify(node, keys, [delivery_input(d) for d in deliveries])
    if id_fields_on(_utc_today()) == "both":
        assert results == [{"event": True, "event_reason": None, "signature": True}] * 4
    else:
        assert results == [{"event": False, "event_reason": NOT_RECIPIENT, "signature": True}] * 4


def test_without_the_underscored_pair_the_sdk_refuses_every_delivery(
    processes: Processes, node: Node
) -> None:
    """Negative: the post-2026 shape (``--id-fields new``) has no ``recipient_client_id``,
    which SDK 4.1.0 requires; the signatures themselves are good."""
    deliveries, keys = emit_deliveries(processes, fields="new")
    assert all(b"recipient_client_id" not in d["body"] for d in deliveries)
    results, _, _ = sdk_verify(node, keys, [delivery_input(d) for d in deliveries])
    assert results == [{"event": False, "event_reason": NOT_RECIPIENT, "signature": True}] * 16


def test_batches_verify_only_with_the_lower_level_helper(processes: Processes, node: Node) -> None:
    """The SDK's recipient check reads a top-level object: a batch array never passes it
    (an SDK limit). Its signature helper verifies the array's exact bytes."""
    deliveries, keys = emit_deliveries(processes, fields="both", count=20, batch=5)
    assert all(d["body"].startswith(b"[") for d in deliveries)
    inputs = [delivery_input(d) for d in deliveries]
    inputs += [delivery_input(d, tampered(d["body"])) for d in deliveries]
    results, _, _ = sdk_verify(node, keys, inputs)
    assert [r["signature"] for r in results] == [True] * 4 + [False] * 4
    assert {r["event_reason"] for r in results} == {NOT_RECIPIENT}


def test_a_signature_over_reserialised_json_is_refused(processes: Processes, node: Node) -> None:
    """Negative: signatures hold for the exact bytes. The SDK refuses (1) a receiver's
    re-serialised copy of a genuine delivery, (2) a sender that signed a re-serialised
    copy but sent the raw bytes; the same key signing the raw bytes passes."""
    deliveries, keys = emit_deliveries(processes, fields="both", count=4)
    # As a Python framework would hand the body on: parsed, then dumped again.
    copies = [json.dumps(json.loads(d["body"])).encode() for d in deliveries]
    assert all(copy != d["body"] for copy, d in zip(copies, deliveries, strict=True))
    inputs = [delivery_input(d, copy) for d, copy in zip(deliveries, copies, strict=True)]

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = "/prod/keys/pub-key-interop-sender.pem"
    keys = {
        **keys,
        path: key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for d, copy in zip(deliveries, copies, strict=True):
        for signed in (copy, d["body"]):  # the broken sender, then the right one
            inputs.append(
                delivery_input({**d, "headers": _signed_headers(_sign(key, signed), path)})
            )
    results, _, _ = sdk_verify(node, keys, inputs)
    refused = {"event": False, "event_reason": "signature", "signature": False}
    accepted = {"event": True, "event_reason": None, "signature": True}
    assert results[:4] == [refused] * 4  # the receiver's re-serialised copy
    assert results[4:] == [refused, accepted] * 4  # the sender's: over the copy, over raw


def _sign(key: rsa.RSAPrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
