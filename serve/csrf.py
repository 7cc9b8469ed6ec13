"""CSRF protection for the pages' state-changing form posts (double-submit token).

Every page sets a random token in a SameSite=Strict, HttpOnly cookie and puts the same token in
a hidden field of its forms. A post whose field does not match its cookie was not sent by one
of our pages: it gets a 403 and changes nothing. The JSON API does not use cookies at all.
"""

from __future__ import annotations

import hmac
import re
import secrets

COOKIE = "cxr_csrf"
FIELD = "csrf_token"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def token_for(cookies: dict) -> tuple[str, bool]:
    """The request's token, or a new one; True when the cookie must be (re)set."""
    current = cookies.get(COOKIE, "")
    if _TOKEN.fullmatch(current):
        return current, False
    return secrets.token_urlsafe(32), True


def cookie_header(token: str, secure: bool) -> str:
    return f"{COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly" + ("; Secure" if secure else "")


def valid(cookies: dict, submitted) -> bool:
    cookie = cookies.get(COOKIE, "")
    return bool(_TOKEN.fullmatch(cookie)) and isinstance(submitted, str) and hmac.compare_digest(cookie, submitted)
