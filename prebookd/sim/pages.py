"""The HTML pages of the account site's older login (`/login`), as clients of that
flow read them: the form, with any error in `#loginErrors`; and the page a successful
login answers, whose iframe hands the refresh token to `setrefresh`."""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

_HEAD = (
    '<!DOCTYPE html>\n<html lang="es"><head><meta charset="utf-8"><title>{title}</title></head>\n'
)

_FORM = """<body>{errors}
<form method="post" action="/login">
<input type="email" name="mail"><input type="password" name="pw">
<input type="hidden" name="loginiframe" value="0">
<input type="hidden" name="loginfingerprint" value="">
<input type="submit" name="login" value="Iniciar sesión">
</form></body></html>
"""

# Clients of the old flow take the token from this iframe's src and see the login
# succeeded by it and by the script's redirect (a script no HTTP client runs, so where
# it points is not served).
_LOGGED_IN = """<body>
<iframe src="{setrefresh}" style="display:none"></iframe>
<script>window.location.href = "/home";</script>
</body></html>
"""


def login_form_page(error: str | None = None) -> str:
    errors = f'\n<div id="loginErrors" class="error">{escape(error)}</div>' if error else ""
    return _HEAD.format(title="AimHarder - Iniciar sesión") + _FORM.format(errors=errors)


def logged_in_page(origin: str, token: str, fingerprint: str) -> str:
    query = urlencode({"token": token, "fingerprint": fingerprint})
    setrefresh = escape(f"{origin}/setrefresh?{query}")
    return _HEAD.format(title="AimHarder") + _LOGGED_IN.format(setrefresh=setrefresh)
