"""Payment cryptography for posemu: keys, check values, components, key wrapping (TDES-ECB and
TR-31), MACs and PIN blocks. Pure functions over bytes; ``cryptography`` underneath.

See docs/crypto.md for the choices made and the published vectors the tests check.
"""

from protocol.crypto import tr31
from protocol.crypto.components import combine_components
from protocol.crypto.errors import (
    ComponentError,
    CryptoError,
    KeyBlockError,
    KeyBlockMacError,
    KeyMaterialError,
    MacError,
    PinBlockError,
)
from protocol.crypto.kcv import kcv
from protocol.crypto.keys import (
    KEY_LENGTHS,
    Key,
    check_des_key,
    fix_parity,
    generate_key,
    has_odd_parity,
    key_weakness,
)
from protocol.crypto.mac import (
    DIALECT_MACS,
    aes_cmac,
    cup_ecb_mac,
    dialect_mac,
    iso9797_mac,
    pad,
    tdes_cmac,
    verify_mac,
    x919_mac,
)
from protocol.crypto.pinblock import (
    build_pin_block,
    decrypt_pin_block,
    encrypt_pin_block,
    pan_field,
    parse_pin_block,
)
from protocol.crypto.wrap import unwrap_ecb, wrap_ecb

__all__ = [
    "DIALECT_MACS",
    "KEY_LENGTHS",
    "ComponentError",
    "CryptoError",
    "Key",
    "KeyBlockError",
    "KeyBlockMacError",
    "KeyMaterialError",
    "MacError",
    "PinBlockError",
    "aes_cmac",
    "build_pin_block",
    "check_des_key",
    "combine_components",
    "cup_ecb_mac",
    "decrypt_pin_block",
    "dialect_mac",
    "encrypt_pin_block",
    "fix_parity",
    "generate_key",
    "has_odd_parity",
    "iso9797_mac",
    "kcv",
    "key_weakness",
    "pad",
    "pan_field",
    "parse_pin_block",
    "tdes_cmac",
    "tr31",
    "unwrap_ecb",
    "verify_mac",
    "wrap_ecb",
    "x919_mac",
]
