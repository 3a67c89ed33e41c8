"""Typed errors of protocol.crypto.

Every error is a ``ValueError`` so callers that only know "bad input" still catch it, and a
``CryptoError`` so the host can map a whole family to one response code (K3). No message built
here ever interpolates key material, ciphertext, MACs or PIN data: §6 of PROTOCOL.md forbids them
in logs, and exception text ends up in logs.
"""


class CryptoError(ValueError):
    """Base of every error raised by protocol.crypto."""


class KeyMaterialError(CryptoError):
    """Key material of the wrong length, wrong parity or an unknown algorithm."""


class ComponentError(CryptoError):
    """A clear key component, or the key they combine to, fails its check value.

    ``index`` is the 0-based position of the failing component in the list given to
    ``combine_components``; it is ``None`` when the combined key fails the expected check value.
    ``check`` says which check failed ("length", "parity" or "kcv"), so a caller can word its
    own message without parsing this one.
    """

    def __init__(self, message: str, index: int | None = None, check: str = "kcv") -> None:
        super().__init__(message)
        self.index = index
        self.check = check


class MacError(CryptoError):
    """A MAC cannot be computed: unknown algorithm, padding or dialect name."""


class KeyBlockError(CryptoError):
    """A TR-31 key block is malformed, or cannot be built from the given parameters."""


class KeyBlockMacError(KeyBlockError):
    """A TR-31 key block is well-formed but its MAC does not verify under the given KBPK."""


class PinBlockError(CryptoError):
    """A PIN, PAN or PIN block is invalid (after decryption: wrong key or tampered block)."""
