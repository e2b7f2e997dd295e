"""A registry token server (Docker's token auth spec) for tests: HTTP Basic
credentials checked, then an RS256 JWT (signed with `openssl dgst`) granting what the
scope asks for, its certificate in the `x5c` header.
Usage: token_server.py PORT KEY CERT USER PASSWORD SERVICE ISSUER"""
import base64
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

port, key, cert, user, password, service, issuer = sys.argv[1:8]
pem = open(cert).read()
der_b64 = "".join(l for l in pem.splitlines() if l and not l.startswith("-----"))
want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(scopes):
    access = []
    for s in scopes:
        kind, _, rest = s.partition(":")
        name, _, actions = rest.rpartition(":")
        access.append({"type": kind, "name": name, "actions": actions.split(",")})
    now = int(time.time())
    head = {"typ": "JWT", "alg": "RS256", "x5c": [der_b64]}
    claims = {"iss": issuer, "sub": user, "aud": service, "exp": now + 300,
              "nbf": now - 10, "iat": now, "jti": str(time.time_ns()), "access": access}
    signing = (b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode()))
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                         input=signing.encode(), capture_output=True, check=True).stdout
    return signing + "." + b64url(sig)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.end_headers()
            return
        q = parse_qs(urlparse(self.path).query)
        t = token(q.get("scope", []))
        body = json.dumps({"token": t, "access_token": t, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


HTTPServer(("127.0.0.1", int(port)), H).serve_forever()
