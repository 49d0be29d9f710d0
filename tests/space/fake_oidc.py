"""A stand-in for Hugging Face's OpenID Connect provider on loopback, for the studio in Space mode.

A Space with `hf_oauth: true` hands the app OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET / OAUTH_SCOPES /
OPENID_PROVIDER_URL; Gradio's real login routes (authlib) then talk to the provider. This one
serves what authlib asks for: the discovery document, an authorization endpoint that signs in
whichever user the test names (`?user=NAME`, added to the redirect by `sign_in`; else
`state.default_user`, for a browser that follows the redirect itself), a token endpoint
that checks the client's credentials and the code, and the JWKS that verifies the RS256 id_token.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

CLIENT_ID = "studio-space-client"
CLIENT_SECRET = "studio-space-secret"
SCOPES = "openid profile write-repos manage-repos"


@dataclass
class ProviderState:
    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "test-key"}))
    codes: dict[str, dict] = field(default_factory=dict)  # code -> {"user", "nonce"}
    default_user: str | None = None  # who signs in when the request names nobody (a browser's click)
    token_requests: int = 0


class _Handler(BaseHTTPRequestHandler):
    state: ProviderState

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        issuer = self.state.issuer
        if url.path == "/.well-known/openid-configuration":
            return self._json(200, {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/oauth/authorize",
                "token_endpoint": f"{issuer}/oauth/token",
                "userinfo_endpoint": f"{issuer}/oauth/userinfo",
                "jwks_uri": f"{issuer}/oauth/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
        if url.path == "/oauth/jwks":
            return self._json(200, KeySet([self.state.key]).as_dict(private=False))
        if url.path == "/oauth/authorize":
            user = query.get("user") or self.state.default_user
            if query.get("client_id") != CLIENT_ID or not user:
                return self._json(400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(16)
            self.state.codes[code] = {"user": user, "nonce": query.get("nonce")}
            target = query["redirect_uri"] + ("&" if "?" in query["redirect_uri"] else "?")
            self.send_response(302)
            self.send_header("Location", target + urlencode({"code": code, "state": query["state"]}))
            self.end_headers()
            return None
        return self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/oauth/token":
            return self._json(404, {"error": "not_found"})
        self.state.token_requests += 1
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self._json(401, {"error": "invalid_client"})
        grant = self.state.codes.pop(form.get("code", ""), None)
        if grant is None:
            return self._json(400, {"error": "invalid_grant"})
        user, now = grant["user"], int(time.time())
        claims = {
            "iss": self.state.issuer, "sub": f"id-{user}", "aud": CLIENT_ID, "iat": now, "exp": now + 3600,
            "name": user.title(), "preferred_username": user, "profile": f"https://huggingface.co/{user}",
            "picture": "",
        }
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.state.key)
        return self._json(200, {
            "access_token": f"hf_oauth_{user}", "token_type": "bearer", "expires_in": 3600,
            "scope": SCOPES, "id_token": id_token,
        })


class FakeOIDCProvider:
    """`with FakeOIDCProvider() as provider:` serves on 127.0.0.1; `provider.url` is its issuer."""

    def __init__(self):
        self.state = ProviderState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.state.issuer = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def space_env(self) -> dict[str, str]:
        """What a Space with `hf_oauth: true` sets for its app."""
        return {
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
            "OAUTH_SCOPES": SCOPES,
            "OPENID_PROVIDER_URL": self.url,
        }

    def __enter__(self) -> FakeOIDCProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def sign_in(app_url: str, user: str) -> str:
    """Sign `user` in to the app through its real login routes; returns the `session` cookie.

    The cookie is `Secure` (Gradio's session middleware is https-only), so over plain http it is
    carried from the login step to the callback by hand, as a browser on https would.
    """
    with httpx.Client(base_url=app_url, timeout=30) as http:
        login = http.get("/login/huggingface")
        assert login.status_code in (302, 307), login.text
        pending = login.cookies["session"]  # holds authlib's state and nonce
        authorize = httpx.get(login.headers["location"] + "&" + urlencode({"user": user}), timeout=30)
        assert authorize.status_code == 302, authorize.text
        callback = http.get(authorize.headers["location"], cookies={"session": pending})
        assert callback.status_code in (302, 307), callback.text
        return callback.cookies["session"]
