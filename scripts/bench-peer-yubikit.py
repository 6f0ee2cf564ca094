#!/usr/bin/env python3
"""The strongest peer of `pivault enroll` for the benchmarks (issue 13): one Python process
that does the same enrollment with yubikit (ykman's library) and plain HTTPS to Vault, the
way a competent automation engineer would write it — one AppRole login, one keep-alive
connection, one PIV session for all slots.

    bench-peer-yubikit.py --reader NAME --slot 9a [--slot 9c ...] --cn "Bench User"

Per slot: generate a key on the token (management key), build a CSR signed on the card
(PIN), POST it to <pki>/sign/<role>, check that the certificate carries the generated key,
import it. Roles as pivault's defaults: 9a -> yubikey-piv-auth, 9c/9d ->
yubikey-piv-email-signing, others -> yubikey-piv.

Environment: VAULT_ADDR (http:// or https://), VAULT_CACERT (optional), VAULT_NAMESPACE
(optional), PIVAULT_ROLE_ID, PIVAULT_SECRET_ID_FILE, PIVAULT_PIN (default 123456),
PIVAULT_MGMT_KEY (hex; default: the factory key), PIVAULT_PKI_MOUNT (default pki).
Prints one JSON line: {"slots": N, "vault_requests": N, "logins": 1, "wall_ms": ...}.
Needs yubikey-manager >= 5 (yubikit) and cryptography in the running interpreter.
"""

import argparse
import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse

from cryptography.hazmat.primitives import serialization
from cryptography import x509
from ykman.pcsc import list_devices
from ykman.piv import generate_csr
from yubikit.core.smartcard import SmartCardConnection
from yubikit.piv import KEY_TYPE, SLOT, PivSession

DEFAULT_MGMT = bytes.fromhex("010203040506070801020304050607080102030405060708")
ROLES = {"9a": "yubikey-piv-auth", "9c": "yubikey-piv-email-signing", "9d": "yubikey-piv-email-signing"}
KEY_TYPES = {"p256": KEY_TYPE.ECCP256, "p384": KEY_TYPE.ECCP384, "rsa2048": KEY_TYPE.RSA2048}


class Vault:
    """A minimal Vault client on one keep-alive connection."""

    def __init__(self, addr, cacert=None, namespace=None):
        url = urllib.parse.urlsplit(addr)
        if url.scheme == "https":
            ctx = ssl.create_default_context(cafile=cacert)
            self.conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=30)
        else:
            self.conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if namespace:
            self.headers["X-Vault-Namespace"] = namespace
        self.requests = 0

    def post(self, path, body):
        self.requests += 1
        self.conn.request("POST", "/v1/" + path, body=json.dumps(body), headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)

    def login(self, role_id, secret_id):
        token = self.post("auth/approle/login", {"role_id": role_id, "secret_id": secret_id})["auth"]["client_token"]
        self.headers["X-Vault-Token"] = token


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", required=True)
    ap.add_argument("--slot", action="append", required=True)
    ap.add_argument("--cn", required=True)
    ap.add_argument("--algorithm", default="p256", choices=sorted(KEY_TYPES))
    args = ap.parse_args()

    start = time.monotonic()
    vault = Vault(os.environ["VAULT_ADDR"], os.environ.get("VAULT_CACERT"), os.environ.get("VAULT_NAMESPACE"))
    with open(os.environ["PIVAULT_SECRET_ID_FILE"]) as f:
        secret_id = f.read().strip()
    vault.login(os.environ["PIVAULT_ROLE_ID"], secret_id)
    mount = os.environ.get("PIVAULT_PKI_MOUNT", "pki")
    mgmt = os.environ.get("PIVAULT_MGMT_KEY")
    mgmt = bytes.fromhex(mgmt) if mgmt else DEFAULT_MGMT

    devices = list_devices(args.reader)
    if len(devices) != 1:
        sys.exit(f"bench-peer-yubikit: {len(devices)} readers match {args.reader!r}")
    with devices[0].open_connection(SmartCardConnection) as conn:
        piv = PivSession(conn)
        piv.authenticate(mgmt)
        pin = os.environ.get("PIVAULT_PIN", "123456")
        piv.verify_pin(pin)
        for name in args.slot:
            slot = SLOT(int(name, 16))
            public_key = piv.generate_key(slot, KEY_TYPES[args.algorithm])
            if name == "9c":
                # PIN policy "always" (the 9c default): VERIFY right before the signature.
                piv.verify_pin(pin)
            csr = generate_csr(piv, slot, public_key, f"CN={args.cn}")
            pem = csr.public_bytes(serialization.Encoding.PEM).decode()
            answer = vault.post(f"{mount}/sign/{ROLES.get(name, 'yubikey-piv')}", {"csr": pem})
            cert = x509.load_pem_x509_certificate(answer["data"]["certificate"].encode())
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            if cert.public_key().public_bytes(*spki) != public_key.public_bytes(*spki):
                sys.exit(f"bench-peer-yubikit: slot {name}: the certificate does not carry the generated key")
            piv.put_certificate(slot, cert)
    print(json.dumps({
        "slots": len(args.slot),
        "vault_requests": vault.requests,
        "logins": 1,
        "wall_ms": round((time.monotonic() - start) * 1000, 1),
    }))


if __name__ == "__main__":
    main()
