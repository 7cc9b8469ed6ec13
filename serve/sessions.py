"""Page sessions: ``<key id>.<expiry>.<hmac>`` cookies started by ``/login`` with an API key.

The key id is re-checked against the key store on use, so revoking the key ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SESSION_COOKIE = "cxr_session"


class Sessions:
    """``<key id>.<expiry>.<hmac>`` cookies; the key id is re-checked against the store on use."""

    def __init__(self, secret: str, hours: float):
        self.secret, self.seconds = secret.encode(), int(hours * 3600)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str) -> str:
        payload = f"{key_id}.{int(time.time()) + self.seconds}"
        return f"{payload}.{self._sign(payload)}"

    def key_id(self, cookie: str | None) -> str | None:
        parts = (cookie or "").split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(parts[2], self._sign(payload)) or int(parts[1]) < time.time():
            return None
        return parts[0]

    def cookie_header(self, value: str, secure: bool) -> str:
        return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={self.seconds}; SameSite=Strict; HttpOnly" + (
            "; Secure" if secure else ""
        )

    @staticmethod
    def clear_header() -> str:
        return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict; HttpOnly"
