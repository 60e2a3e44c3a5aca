"""Hostile-input fuzz of deserialize-then-compute for CKKS, run in a subprocess so a crash is a crash.

Each case is either rejected with a :class:`CryptoError` (at deserialize, or by the range check at
decryption) or provably harmless (it decrypts to the original values within the error bound). Any
other exception, a garbage decryption passing the bound, or a dead process fails the test.
Run directly for more cases: ``python tests/test_crypto_fuzz.py 20000``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

N_CASES = 2400
REPO = Path(__file__).resolve().parents[1]


def _mutations(valid: bytes, foreign: bytes, rng: np.random.Generator, n: int):
    fixed = [b"", b"\x00", b"abc", valid[:3], valid[:24], valid[:-1], valid + b"\x00", valid * 2, foreign]
    for case in fixed:
        yield "fixed", case
    kinds = ["truncate", "flip", "flip_header", "random", "splice", "zero_run", "random_body"]
    head = 24 + 4 + 16  # envelope + part length + SEAL header: kept intact by "random_body"
    for i in range(n - len(fixed)):
        kind = kinds[i % len(kinds)]
        buf = bytearray(valid)
        if kind == "truncate":
            buf = buf[:int(rng.integers(0, len(buf)))]
        elif kind in ("flip", "flip_header"):
            hi = 64 if kind == "flip_header" else len(buf)
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, hi))
                buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "random":
            length = int(rng.integers(0, 2 * len(valid)))
            buf = bytearray(rng.integers(0, 256, length, dtype=np.uint8).tobytes())
        elif kind == "random_body":
            buf[head:] = rng.integers(0, 256, len(buf) - head, dtype=np.uint8).tobytes()
        elif kind == "splice":
            cut = int(rng.integers(0, len(buf)))
            buf = buf[:cut] + bytearray(foreign[cut:])
        else:
            pos = int(rng.integers(0, len(buf)))
            buf[pos:pos + int(rng.integers(1, 256))] = bytes(min(255, len(buf) - pos))
        yield kind, bytes(buf)


def run(n_cases: int) -> dict[str, object]:
    from fedrec.crypto.backend import CryptoError, KeyPin, load_public
    from fedrec.crypto.ckks import CKKSBackend

    guest = CKKSBackend.keygen("n4096")
    host = load_public(guest.public_bytes(), KeyPin())
    stranger = CKKSBackend.keygen("n4096", rotations=False)
    rng = np.random.default_rng(12345)
    x = rng.uniform(-1, 1, 64)
    valid = guest.serialize(guest.encrypt(x))
    foreign = stranger.serialize(stranger.encrypt(x))
    ref = host.encrypt(np.ones(64))
    outcome: Counter[str] = Counter()
    tol = guest.error_bound(0)
    for kind, data in _mutations(valid, foreign, rng, n_cases):
        try:
            ct = host.deserialize(data, 64, 0)          # host side: validate, then compute
            out = host.add(host.mul_plain(ct, np.full(64, 0.5)), host.mul_plain(ref, np.ones(64)))
            host.dot_plain([host.deserialize(data, 64, 0), ref], [np.full(64, 0.25), np.ones(64)])
            back = guest.deserialize(host.serialize(out), 64, 1)
            got = guest.decrypt(back, bound=16.0)       # key holder side: range check
        except CryptoError:
            outcome[f"rejected:{kind}"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - anything but CryptoError is a finding
            outcome[f"UNEXPECTED:{type(exc).__name__}:{exc}"[:120]] += 1
            continue
        if np.max(np.abs(got - (0.5 * x + 1))) <= 16 * tol:
            outcome[f"harmless:{kind}"] += 1
        else:
            outcome[f"GARBAGE_ACCEPTED:{kind}"] += 1
    return {"cases": sum(outcome.values()), "outcome": dict(outcome)}


def test_hostile_ciphertexts_never_crash_or_slip_through():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, str(N_CASES)], check=False, capture_output=True,
                          text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, f"fuzz process died (rc={proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cases"] >= 2000
    bad = {k: v for k, v in result["outcome"].items() if not k.startswith(("rejected:", "harmless:"))}
    assert bad == {}, bad
    assert sum(v for k, v in result["outcome"].items() if k.startswith("rejected:")) >= 1900


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else N_CASES)))
