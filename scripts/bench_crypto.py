"""Crypto speed: posemu against psec on the same inputs, in the same run.

Cases: X9.19 MAC over a 200-byte message, TDES check value, TR-31 version D wrap and unwrap.
Each case runs for a fixed time slice, best of several rounds, so both libraries meet the same
machine state; ratios (posemu ops/s over psec ops/s) are what to compare across machines.
psec warns under current ``cryptography``; its warnings are silenced while it runs.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable

from benchlib import rates

from protocol.crypto import Key, kcv, tr31, x919_mac

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import psec

MAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MESSAGE = bytes(range(200))
KBPK = Key("AES", "K0", bytes.fromhex("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"))
KEY = Key("TDES", "P0", MAK)
PSEC_HEADER = "D0000P0TE00N0000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case and library")
    args = parser.parse_args()

    our_block = tr31.wrap(KBPK, KEY, "P0", mode_of_use="E")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        their_block = psec.tr31.wrap(KBPK.material, PSEC_HEADER, MAK)
        checks = [
            x919_mac(MAK, MESSAGE) == psec.mac.generate_retail_mac(MAK[:8], MAK[8:], MESSAGE, 1),
            kcv(MAK, 3) == psec.des.generate_kcv(MAK, 3),
            psec.tr31.unwrap(KBPK.material, our_block)[1] == MAK,
            tr31.unwrap(KBPK, their_block)[1].material == MAK,
        ]
    assert all(checks), "posemu and psec disagree on the benchmark inputs"

    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "mac": (
            lambda: x919_mac(MAK, MESSAGE),
            lambda: psec.mac.generate_retail_mac(MAK[:8], MAK[8:], MESSAGE, 1),
        ),
        "kcv": (lambda: kcv(MAK, 3), lambda: psec.des.generate_kcv(MAK, 3)),
        "tr31_wrap": (
            lambda: tr31.wrap(KBPK, KEY, "P0", mode_of_use="E"),
            lambda: psec.tr31.wrap(KBPK.material, PSEC_HEADER, MAK),
        ),
        "tr31_unwrap": (
            lambda: tr31.unwrap(KBPK, our_block),
            lambda: psec.tr31.unwrap(KBPK.material, our_block),
        ),
    }
    result: dict[str, float] = {}
    print(f"{'case':<12} {'posemu ops/s':>14} {'psec ops/s':>12} {'ratio':>7}")
    for name, (ours, theirs) in cases.items():
        our_rate, their_rate = rates(ours, theirs, args.seconds)
        ratio = our_rate / their_rate
        result[f"{name}_ops"] = round(our_rate)
        result[f"psec_{name}_ops"] = round(their_rate)
        result[f"{name}_ratio"] = round(ratio, 2)
        print(f"{name:<12} {our_rate:>14,.0f} {their_rate:>12,.0f} {ratio:>7.2f}")
    if args.json:
        print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
