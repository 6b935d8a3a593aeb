#!/usr/bin/env python3
"""Mints an ES256 JWT for bench/run with a PEM private key (python3 + cryptography).

Usage: es256_token.py KEY.pem ISSUER SUB TTL_SECONDS [KID]
"""
import base64
import json
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main() -> None:
    key_path, issuer, sub, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    kid = sys.argv[5] if len(sys.argv) > 5 else None
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", **({"kid": kid} if kid else {})}
    claims = {"sub": sub, "iss": issuer, "iat": now, "exp": now + ttl}
    signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    # JWS wants the raw 64-byte r || s, not DER.
    print(signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")))


if __name__ == "__main__":
    main()
