"""One error family for every transport, so callers handle TCP and serial alike."""


class TransportError(ConnectionError):
    """The peer could not be reached, did not answer in time, or the line failed."""
