"""Dialects for the protocol tests: the two built-ins and one loaded from a TOML spec file."""

from __future__ import annotations

import pytest

from protocol.dialects import get_dialect, load_dialect
from protocol.spec import Dialect

# Every kind, every prefix, odd BCD lengths, an ASCII MTI and prefixes around BCD digits, a TPDU
# with a 2-byte header, and gaps in the table (undefined fields) on both bitmaps.
CUSTOM_TOML = """
name = "custom"
description = "test dialect: mixed encodings, every kind"
mti = "ascii"
digits = "bcd"
prefixes = "ascii"
tpdu = true
header = "4142"
mac = "cup-ecb"

[fields]
2 = { type = "n", max = 19, prefix = "LL", mask = "pan" }
3 = { type = "n", length = 6 }
4 = { type = "n", length = 5 }
7 = { type = "a", length = 4 }
9 = { type = "xn", length = 9 }
20 = { type = "xn", max = 12, prefix = "LL" }
35 = { type = "z", max = 37, prefix = "LL", mask = "track" }
36 = { type = "z", max = 104, prefix = "LLL", mask = "track" }
41 = { type = "ans", length = 8 }
45 = { type = "ns", max = 40, prefix = "LL" }
48 = { type = "n", max = 999, prefix = "LLL" }
52 = { type = "b", length = 8, mask = "pin" }
55 = { type = "b", max = 300, prefix = "LLL" }
62 = { type = "b", max = 999, prefix = "LLL", mask = "key" }
64 = { type = "b", length = 8, mask = "mac" }
70 = { type = "n", length = 3 }
90 = { type = "n", max = 99, prefix = "LL" }
101 = { type = "an", max = 17, prefix = "LL" }
128 = { type = "b", length = 8, mask = "mac" }
"""


@pytest.fixture(scope="session")
def custom_dialect(tmp_path_factory) -> Dialect:
    path = tmp_path_factory.mktemp("dialects") / "custom.toml"
    path.write_text(CUSTOM_TOML, encoding="utf-8")
    return load_dialect(path)


@pytest.fixture(scope="session", params=["iso87", "cup", "custom"])
def any_dialect(request, custom_dialect) -> Dialect:
    """Each dialect in turn: iso87, cup and the custom one loaded from TOML."""
    return custom_dialect if request.param == "custom" else get_dialect(request.param)
