"""JWT bearer tokens from an identity provider, with the real clients: RS256 tokens made by
PyJWT against a JWKS that a local HTTP server publishes (as Keycloak, Auth0 or Entra do).
Roles from a nested claim, forged / expired / wrong-audience / alg-none tokens refused over
HTTP and gRPC, a JWKS rotation picked up, and API keys still accepted beside tokens."""
import base64
import hashlib
import hmac
import http.server as httpserver
import json
import threading
import time

import jwt
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tritonclient.utils import InferenceServerException

from conftest import Server, copy_repo
from hostile import http as raw_http
from test_auth import bearer, keys_create, simple_inputs

ISSUER = "https://idp.factory.local/realms/infera"


class Provider:
    """An identity provider's signing keys and its JWKS endpoint."""

    def __init__(self):
        self.keys = {}
        self.published = []
        self.fetches = 0
        provider = self

        class Handler(httpserver.BaseHTTPRequestHandler):
            def do_GET(self):
                provider.fetches += 1
                body = json.dumps({"keys": [provider.jwk(k) for k in provider.published]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/protocol/openid-connect/certs"

    def new_key(self, kid):
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def jwk(self, kid):
        d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
        return {**d, "kid": kid, "use": "sig", "alg": "RS256"}

    def token(self, kid, roles=("infer",), aud="infera", exp_in=600, **extra):
        now = int(time.time())
        claims = {"sub": f"user-{kid}", "iss": ISSUER, "aud": aud, "iat": now, "exp": now + exp_in,
                  "realm_access": {"roles": list(roles)}, **extra}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})


def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    base = tmp_path_factory.mktemp("jwt")
    p = Provider()
    p.published = [p.new_key("k1")]
    keys = base / "keys.toml"
    api_key = keys_create(keys, "batch-runner", "infer")
    s = Server(copy_repo(base), "--jwt-jwks", p.url, "--jwt-issuer", ISSUER, "--jwt-audience", "infera",
               "--jwt-roles-claim", "realm_access.roles", "--auth-keys", str(keys),
               "--audit-log", str(base / "audit.jsonl"))
    yield {"server": s, "p": p, "api_key": api_key, "base": base}
    s.stop()
    p.httpd.shutdown()


def http(s, method, path, body=b"", headers=None):
    """(status, JSON body) of one request."""
    st, _, payload = raw_http(s, method, path, body or b"", headers)
    return st, json.loads(payload) if payload else None


def status_of(call):
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message()


def test_tokens_work_with_tritonclient_over_http_and_grpc(idp):
    s, p = idp["server"], idp["p"]
    c = httpclient.InferenceServerClient(s.http)
    g = grpcclient.InferenceServerClient(s.grpc)
    t = p.token("k1")
    assert c.infer("simple", simple_inputs(httpclient), headers=bearer(t)).as_numpy("OUTPUT0").tolist() == [[2] * 16]
    assert g.infer("simple", simple_inputs(grpcclient), headers=bearer(t)).as_numpy("OUTPUT0").tolist() == [[2] * 16]
    # API keys keep working beside tokens.
    k = idp["api_key"]
    assert c.infer("simple", simple_inputs(httpclient), headers=bearer(k)).as_numpy("OUTPUT0").tolist() == [[2] * 16]


def test_the_role_claim_decides_the_endpoint_groups(idp):
    s, p = idp["server"], idp["p"]
    reader = p.token("k1", roles=["reader"])
    ops = p.token("k1", roles=["offline_access", "operator"])
    st, body = http(s, "POST", "/v2/models/simple/infer", b"{}", bearer(reader) | {"content-type": "application/json"})
    assert st == 403 and "role reader" in body["error"], body
    st, _ = http(s, "GET", "/v2/models/simple/config", None, bearer(reader))
    assert st == 200
    st, body = http(s, "POST", "/v2/repository/index", b"{}", bearer(reader) | {"content-type": "application/json"})
    assert st == 403
    st, body = http(s, "POST", "/v2/repository/index", b"{}", bearer(ops) | {"content-type": "application/json"})
    assert st == 200 and any(m["name"] == "simple" for m in body)
    g = grpcclient.InferenceServerClient(s.grpc)
    assert status_of(lambda: g.infer("simple", simple_inputs(grpcclient), headers=bearer(reader)))[0] == \
        "StatusCode.PERMISSION_DENIED"
    no_role = p.token("k1", roles=["viewer"])
    st, body = http(s, "GET", "/v2/models/simple/config", None, bearer(no_role))
    assert st == 403 and "no known role" in body["error"]


def test_forged_expired_misdirected_and_unsigned_tokens_are_refused(idp):
    s, p = idp["server"], idp["p"]
    good = p.token("k1")
    h, c, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(c + "=="))
    forged = ".".join([h, b64({**claims, "realm_access": {"roles": ["admin"]}}), sig])
    stranger = Provider()
    stranger.new_key("k1")  # the trusted kid, an untrusted key
    cases = {
        "forged": (forged, "signature"),
        "foreign key": (stranger.token("k1"), "signature"),
        "expired": (p.token("k1", exp_in=-300), "expired"),
        "wrong audience": (p.token("k1", aud="billing"), "audience"),
        "wrong issuer": (p.token("k1", iss="https://evil.example"), "issuer"),
        "alg none": (".".join([b64({"alg": "none", "typ": "JWT", "kid": "k1"}), c, ""]), "algorithm"),
    }
    # Algorithm confusion: HS256 keyed with the RSA public key. PyJWT refuses to make
    # such a token, so it is built by hand.
    pem = p.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{c}"
    mac = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    cases["HS256 with the public key"] = (f"{signing_input}.{mac}", "algorithm")
    client = httpclient.InferenceServerClient(s.http)
    g = grpcclient.InferenceServerClient(s.grpc)
    for name, (token, why) in cases.items():
        st, msg = status_of(lambda: client.infer("simple", simple_inputs(httpclient), headers=bearer(token)))
        assert st == "401" and why in msg, (name, st, msg)
        st, msg = status_of(lambda: g.infer("simple", simple_inputs(grpcclient), headers=bearer(token)))
        assert st == "StatusCode.UNAUTHENTICATED" and why in msg, (name, st, msg)
    # 401s carry WWW-Authenticate; refusals are in the audit log, tokens never are.
    st, _ = http(s, "GET", "/v2/models/simple/config", None, bearer(forged))
    assert st == 401
    audit = (idp["base"] / "audit.jsonl").read_text()
    assert "401" in audit and sig not in audit and good not in audit


def test_a_jwks_rotation_is_picked_up(idp):
    s, p = idp["server"], idp["p"]
    c = httpclient.InferenceServerClient(s.http)
    old = p.token("k1")
    c.infer("simple", simple_inputs(httpclient), headers=bearer(old))
    # The provider rotates: k2 signs from now on, k1 is withdrawn.
    p.published = [p.new_key("k2")]
    new = p.token("k2")
    deadline = time.time() + 20
    while True:
        try:
            c.infer("simple", simple_inputs(httpclient), headers=bearer(new))
            break
        except InferenceServerException as e:
            assert e.status() == "401" and "key id" in e.message(), e.message()
            assert time.time() < deadline, "the rotated JWKS was not picked up"
            time.sleep(0.5)
    st, msg = status_of(lambda: c.infer("simple", simple_inputs(httpclient), headers=bearer(old)))
    assert st == "401" and "key id" in msg
    # Made-up key ids do not make the server hammer the provider.
    before = p.fetches
    for i in range(20):
        status_of(lambda: c.infer("simple", simple_inputs(httpclient), headers=bearer(
            jwt.encode({"sub": "x"}, p.keys["k2"], algorithm="RS256", headers={"kid": f"nope{i}"}))))
    assert p.fetches - before <= 1
