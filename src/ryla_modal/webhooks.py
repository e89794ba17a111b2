"""Receiving ryla's job webhooks: check a delivery's Standard Webhooks signature and read it.

A deployment signs every delivery with its secret (``RYLA_WEBHOOK_SECRET``, in the Standard
Webhooks form ``whsec_<base64>``) following https://www.standardwebhooks.com: the headers
``webhook-id`` (the same for every retry of one job's event, so a receiver can drop repeats),
``webhook-timestamp`` and ``webhook-signature`` (HMAC-SHA256 of ``id.timestamp.body``).  This
module imports nothing of the server, so a receiver needs only ``ryla_modal`` and
``standardwebhooks``::

    from ryla_modal.webhooks import verify

    event = verify(body, request.headers, secret)   # raises WebhookVerificationError
    if event["type"] == "job.succeeded":
        for out in event["data"]["outputs"]:
            print(out["url"], out["sha256"])
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from typing import Any

from ryla_modal.errors import ConfigError, RylaError

#: Prefix of a Standard Webhooks secret.
SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
#: Shortest key accepted: HMAC-SHA256 wants at least 16 random bytes to be worth anything.
MIN_SECRET_BYTES = 16
#: The environment variable that holds a deployment's signing secret.
SECRET_ENV = "RYLA_WEBHOOK_SECRET"  # noqa: S105 - a variable's name


class WebhookVerificationError(RylaError, ValueError):
    """A delivery that is not provably from the deployment: refuse it (answer 400 or 401)."""


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form (set it as RYLA_WEBHOOK_SECRET)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ConfigError (never showing it) when malformed.

    The ``standardwebhooks`` package decodes leniently (junk characters are skipped), so a
    mistyped secret would sign with some other key; this is the strict check both sides run.
    """
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the webhook secret is not a Standard Webhooks secret (whsec_ followed by the base64"
            f" of at least {MIN_SECRET_BYTES} random bytes)",
            hint='make one with: python -c "from ryla_modal.webhooks import new_secret;'
            ' print(new_secret())"',
        )
    return key


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The delivery's JSON once its signature and timestamp check out.

    ``headers`` is any mapping of the request's headers (names in any case).  Raises
    ``WebhookVerificationError`` for a missing header, a signature made with another secret or
    over other bytes, or a timestamp more than five minutes away from now (a replayed request);
    ``ConfigError`` when ``secret`` itself is malformed.
    """
    from standardwebhooks.webhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError as _Refused

    hook = Webhook(secret_key(secret))
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(h)
    ]
    if missing:
        raise WebhookVerificationError(
            f"not a signed webhook delivery: header {', '.join(missing)} missing"
        )
    try:
        hook.verify(body, lowered, json_parse=False)
    except _Refused as exc:
        reason = str(exc)
        if "too old" in reason or "too new" in reason:
            raise WebhookVerificationError(
                f"webhook timestamp {lowered['webhook-timestamp'][:20]!r} is more than five"
                " minutes from now: a replayed or delayed delivery (or a clock that is off)"
            ) from None
        if "signature" in reason.lower() and "header" not in reason.lower():
            raise WebhookVerificationError(
                "webhook signature does not match: signed with another secret, or the body"
                " was changed (verify the raw bytes, before any JSON parsing)"
            ) from None
        raise WebhookVerificationError(f"webhook headers are malformed: {reason}") from None
    except (ValueError, binascii.Error) as exc:  # a signature that is not base64, and the like
        raise WebhookVerificationError(f"webhook headers are malformed: {exc}") from None
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookVerificationError(f"the signed body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the signed body is not a JSON object")
    return event


#: ``ryla_modal.verify_webhook``: the same function under a name that stands alone.
verify_webhook = verify

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "new_secret",
    "secret_key",
    "verify",
    "verify_webhook",
]
