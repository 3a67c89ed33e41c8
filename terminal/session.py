"""The terminal's logic without any I/O, in the manner of h11: requests out, responses in.

`Session` builds the bytes of a request and turns the bytes of a response into a `Result`; the
caller owns the socket or serial port, the files and the clock. Everything a purchase or a
sign-on decides (which key error, whether new keys may be installed) is decided here, so the
same logic serves TCP, serial and tests, and tests need no network to reach every branch.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Literal

from protocol import codes, emv, fields, macing, requests
from protocol.clock import Clock, Rng
from protocol.codec import Codec, Stamp, codec_for
from protocol.codes import KeyErrorReason
from protocol.crypto.errors import CryptoError
from protocol.crypto.kcv import kcv
from protocol.crypto.keys import Key
from protocol.crypto.pinblock import encrypt_pin_block
from protocol.crypto.wrap import unwrap_ecb
from protocol.errors import ProtocolError
from protocol.message import Message
from protocol.spec import Dialect
from terminal.keystore import KeySet, StoredKey
from terminal.pending import NO_ANSWER, PendingReversal
from terminal.store import Config

Kind = Literal["signon", "signoff", "echo", "purchase", "inquiry", "void", "refund", "reversal",
               "settle", "upload"]
Source = Literal["host", "terminal"]

RESPONSE_MTI = {"0800": "0810", "0820": "0830", "0200": "0210", "0220": "0230", "0400": "0410",
                "0500": "0510", "0320": "0330"}
CURRENCY = "156"
MACED_KINDS = frozenset({"purchase", "inquiry", "void", "refund", "reversal", "settle", "upload"})
STAMPS = 8
"""Network requests kept pre-encoded per session (by kind and batch): a batch lasts a day."""


class TerminalKeyError(Exception):
    """A key error 14 the terminal finds itself, before anything is sent."""

    def __init__(self, reason: KeyErrorReason, detail: str = "") -> None:
        super().__init__(reason.field44())
        self.reason = reason
        self.detail = detail


def key_error(code: str, key: str, text: str, detail: str = "") -> TerminalKeyError:
    return TerminalKeyError(KeyErrorReason(code, key, text), detail)


@dataclass(frozen=True)
class Request:
    """A request ready to send, and what the session needs to check its answer."""

    kind: Kind
    message: Message
    encoded: bytes
    stan: int


@dataclass(frozen=True)
class Result:
    """What an exchange came to.

    `outcome` is one of: approved, declined, ok, refused (any other code, reported as it is),
    key_error (with `reason` and `source`), host_code (a 14 with no K reason).
    `keyset` is the key set to store when the exchange changes the terminal's keys.
    """

    kind: Kind
    outcome: str
    rc: str | None = None
    reason: KeyErrorReason | None = None
    source: Source = "host"
    response: Message | None = None
    keyset: KeySet | None = None
    detail: str = ""

    @property
    def is_key_error(self) -> bool:
        return self.outcome == "key_error"

    @property
    def renewal_due(self) -> bool:
        """The host asked, under a MAC that verified, for a sign-on after this transaction
        (its working keys are about to expire): only a believed approval or decline counts."""
        return (self.outcome in ("approved", "declined") and self.response is not None
                and self.response.text(44) == codes.RENEWAL_DUE)


def refuse_key_set(response: Message, asked: str) -> TerminalKeyError | None:
    """A 0810 whose 60.3 names another key set than the one asked for: another acquirer's
    download (005, 011, ...), whose field 62 layout this terminal does not know, is refused
    by name (K3, old keys kept) rather than cut by our layout and reported as corrupt."""
    try:
        answered = fields.Field60.parse(response.text(60)).nmic
    except ProtocolError:
        return None  # no readable 60.3: the download is judged by the key set asked for
    if answered == asked:
        return None
    known = answered in fields.KEY_SETS
    return key_error(
        "K3", "WK", f"key set {answered} " + ("unasked" if known else "unknown"),
        f"the host sent key set {answered} where {asked} was asked for"
        + ("" if known else f"; this terminal knows {', '.join(fields.KEY_SETS)}")
        + "; old keys kept")


_PAN = re.compile(r"[0-9]{12,19}")
_EXPIRY = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])")
_PIN = re.compile(r"[0-9]{4,12}")


def check_card(pan: str, expiry: str, pin: str | None) -> None:
    """Refuse a mistyped card before a STAN is spent on it: ASCII digits only (`isdigit`
    alone takes other scripts' digits, which no card field can carry)."""
    if not _PAN.fullmatch(pan):
        raise ValueError("the card number must be 12 to 19 digits")
    if not _EXPIRY.fullmatch(expiry):
        raise ValueError("the expiry must be YYMM")
    if pin is not None and not _PIN.fullmatch(pin):
        raise ValueError("a PIN is 4 to 12 digits")



@dataclass(frozen=True)
class Purchase:
    """A keyed-card purchase, or a chip one (`chip`, with the card's sequence number); the PIN
    is held only as long as it takes to build the request. A card with `amount` 0 is what an
    inquiry, a void or a refund presents (they take their amount elsewhere, or none)."""

    amount: int
    pan: str
    expiry: str
    pin: str | None = None
    chip: bool = False
    sequence: str = "001"  # field 23 and tag 5F34 of a chip card

    def __post_init__(self) -> None:
        check_card(self.pan, self.expiry, self.pin)
        if not (len(self.sequence) == 3 and self.sequence.isdigit() and self.sequence[0] == "0"):
            # field 23 is n3, the card's own tag 5F34 n2: 000-099 fit both
            raise ValueError("the card sequence number is 3 digits, 000 to 099")

    def __repr__(self) -> str:
        return f"Purchase(amount={self.amount}, pin={'yes' if self.pin else 'no'}, chip={self.chip})"


@dataclass(frozen=True)
class Original:
    """The transaction a void or a refund names, as the terminal's ledger has it."""

    batch: int
    stan: int
    amount: int
    rrn: str = ""
    auth: str = ""
    date: str = ""

    def reference(self) -> requests.Reference:
        return requests.Reference(f"{self.batch:06d}", f"{self.stan:06d}", self.rrn, self.auth,
                                  self.date)


class Session:
    """One terminal's protocol logic over its configuration and current keys."""

    def __init__(
        self,
        config: Config,
        dialect: Dialect,
        keys: KeySet,
        clock: Clock = time.time,
        rng: Rng = os.urandom,
    ) -> None:
        self.config = config
        self.dialect = dialect
        self.codec: Codec = codec_for(dialect)
        self._stamps: dict[tuple[str, int], Stamp] = {}
        self.keys = keys
        self.clock = clock
        self.rng = rng  # a chip purchase's unpredictable number and stand-in cryptogram

    # --- requests ---------------------------------------------------------------------------

    def signon(self, stan: int, batch: int, key_set: str | None = None) -> Request:
        if self.keys.tmk is None:
            raise key_error("K1", "TMK", "not loaded", "no TMK: run the key ceremony first")
        code = key_set or self.config.key_set
        fields.key_set(code)  # refuses an unknown set before anything is sent
        now = time.gmtime(self.clock())  # UTC: the same test gives the same bytes anywhere
        msg = requests.sign_on(self._station(batch), f"{stan:06d}", code,
                               (time.strftime("%H%M%S", now), time.strftime("%m%d", now)),
                               self.config.operator)
        return Request("signon", msg, self.codec.encode(msg), stan)

    def network(self, kind: Literal["signoff", "echo"], stan: int, batch: int) -> Request:
        nmic = fields.NMIC_SIGN_OFF if kind == "signoff" else fields.NMIC_ECHO
        msg = requests.network(self._station(batch), f"{stan:06d}", nmic)
        stamp = self._stamps.get((kind, batch))
        if stamp is None:  # one per batch: only the STAN differs from one echo test to the next
            if len(self._stamps) >= STAMPS:
                self._stamps.clear()
            stamp = self._stamps[kind, batch] = self.codec.stamp(msg, (11,))
        return Request(kind, msg, stamp(msg.fields[11]), stan)

    def check_working_keys(self, need_pik: bool) -> StoredKey:
        """The MAK to use, or the key error a purchase must stop with."""
        if self.keys.tmk is None:
            raise key_error("K1", "TMK", "not loaded", "no TMK: run the key ceremony first")
        mak = self.keys.keys.get("MAK")
        if mak is None:
            raise key_error("K1", "WK", "not signed on", "no working keys in the keystore")
        if need_pik and "PIK" not in self.keys.keys:
            raise key_error("K1", "PIK", "not signed on", "no PIN key in the keystore")
        age = self.clock() - mak.installed_at
        if age > self.config.wk_lifetime:
            raise key_error(
                "K2", "WK", "lifetime over",
                f"working keys are {age:.0f} s old; the local lifetime is "
                f"{self.config.wk_lifetime} s",
            )
        return mak

    def _station(self, batch: int) -> requests.Station:
        return requests.Station(self.config.tid, self.config.mid, f"{batch:06d}", CURRENCY)

    def _card(self, card: Purchase, stan: int = 0) -> requests.CardEntry:
        """The card as keyed (or inserted); with a PIN, its block under the PIK and field 53
        of the key set."""
        chip = self._chip(card, stan) if card.chip else None
        if card.pin is None:
            return requests.CardEntry(card.pan, card.expiry, chip=chip)
        block = encrypt_pin_block(self.keys.keys["PIK"].key, card.pin, card.pan, fmt=0)
        control = fields.key_set(self.keys.key_set or self.config.key_set).security_control
        return requests.CardEntry(card.pan, card.expiry, pin_block=block, security_control=control,
                                  chip=chip)

    def _chip(self, card: Purchase, stan: int) -> requests.ChipData:
        """Field 55 as a CUP/PBOC terminal sends it for an online authorisation. There is no
        card to compute the ARQC, so 8 random bytes stand in for it (a host does not check it:
        validating an ARQC is the issuer's job); the card's counter (9F36) follows the STAN."""
        spec = self.dialect.fields.get(55)
        if spec is None or not spec.tlv:
            raise ValueError(f"a chip purchase needs field 55 as BER-TLV (cup, or tlv = true in a "
                             f"spec file); {self.dialect.name}'s is "
                             f"{spec.notation() if spec else 'absent'}")
        date = time.strftime("%y%m%d", time.gmtime(self.clock()))
        icc = emv.purchase_tags(f"{card.amount:012d}", "0" + CURRENCY, date, self.rng(4),
                                stan % 0x10000, self.rng(8), pan_sequence=card.sequence[1:])
        return requests.ChipData(icc, card.sequence)

    def _signed(self, kind: Kind, msg: Message, stan: int, need_pik: bool = False) -> Request:
        """The MAK is checked before anything else is built, so a key error uses no STAN."""
        mak = self.check_working_keys(need_pik)
        return Request(kind, msg, macing.sign(self.codec, msg, mak.key), stan)

    def purchase(self, stan: int, batch: int, purchase: Purchase) -> Request:
        self.check_working_keys(need_pik=purchase.pin is not None)
        msg = requests.purchase(self._station(batch), f"{stan:06d}", self._card(purchase, stan),
                                purchase.amount)
        return self._signed("purchase", msg, stan)

    def inquiry(self, stan: int, batch: int, card: Purchase) -> Request:
        """A balance inquiry carries no field 4 (§7)."""
        self.check_working_keys(need_pik=card.pin is not None)
        msg = requests.balance_inquiry(self._station(batch), f"{stan:06d}", self._card(card))
        return self._signed("inquiry", msg, stan)

    def void(self, stan: int, batch: int, card: Purchase, original: Original) -> Request:
        """Field 61 names the original (batch, STAN); 4, 37 and 38 are the original's."""
        self.check_working_keys(need_pik=card.pin is not None)
        msg = requests.void(self._station(batch), f"{stan:06d}", self._card(card),
                            original.amount, original.reference())
        return self._signed("void", msg, stan)

    def refund(self, stan: int, batch: int, card: Purchase, original: Original,
               amount: int) -> Request:
        """Field 61 names the original by batch, STAN and the MMDD of its 0210 (§7)."""
        self.check_working_keys(need_pik=card.pin is not None)
        msg = requests.refund(self._station(batch), f"{stan:06d}", self._card(card), amount,
                              original.reference())
        return self._signed("refund", msg, stan)

    def pending_for(self, request: Request, at: float) -> PendingReversal:
        """The record written before a purchase or a void leaves: the reversal as it would go
        now, with reason 98 (no answer in time), which is what a power cut before the answer
        amounts to. It never holds the PIN block: a reversal carries none."""
        template = requests.reversal(request.message, NO_ANSWER)
        kept = {n: template.text(n) for n in template.fields if n != 39}
        batch = int(fields.Field60.parse(template.text(60)).batch)
        return PendingReversal(request.kind, request.stan, batch, int(template.text(4) or 0),
                               kept, at=at)

    def reversal(self, pending: PendingReversal) -> Request:
        """0400 with the original's STAN and fields and 39 the reason, MACed with the MAK of
        now (a sign-on since the original changes it; the host matches by TID, batch and
        STAN, not by bytes)."""
        msg = Message("0400", {**pending.fields, 39: pending.reason})
        return self._signed("reversal", msg, pending.stan)

    def settlement(self, stan: int, batch: int, totals: fields.Half) -> Request:
        self.check_working_keys(need_pik=False)
        msg = requests.settlement(self._station(batch), f"{stan:06d}", f"{self.config.operator} ",
                                  fields.SettlementTotals(totals))
        return self._signed("settle", msg, stan)

    def upload(self, stan: int, batch: int, records: list[fields.UploadRecord],
               last: bool) -> Request:
        self.check_working_keys(need_pik=False)
        msg = requests.batch_upload(self._station(batch), f"{stan:06d}", records, last)
        return self._signed("upload", msg, stan)

    # --- responses --------------------------------------------------------------------------

    def receive(self, request: Request, data: bytes) -> Result:
        """Check a response against its request; ProtocolError when it is not its answer.

        An answer to a sign-on that does not even decode is a key download cut or garbled on
        the line: key error K3 (old keys kept), as a terminal shows it, not a protocol error.
        """
        try:
            response = self.codec.decode(data)
        except ProtocolError as exc:
            if request.kind != "signon":
                raise
            return Result("signon", "key_error", codes.KEY_ERROR,
                          KeyErrorReason("K3", "WK", "download corrupt"), "terminal",
                          detail=f"the 0810 does not decode: {exc}")
        return self.judge(request, data, response)

    def judge(self, request: Request, data: bytes, response: Message) -> Result:
        """`receive` for a response already decoded: a caller with many requests in flight on
        one connection decodes once to find the request by its STAN, then judges it here."""
        expected = RESPONSE_MTI[request.message.mti]
        if response.mti != expected:
            raise ProtocolError(f"expected a {expected}, got a {response.mti}", field="MTI")
        if response.text(11) != request.message.text(11):
            raise ProtocolError("the response's STAN is not the request's", field=11)
        if response.text(41).strip() != self.config.tid:
            raise ProtocolError("the response is for another terminal", field=41)
        rc = response.text(39)
        # An approval is no key error whatever 44 says: its reason is read for other codes only.
        reason = KeyErrorReason.parse(response.text(44)) if rc != codes.APPROVED else None
        # A host may answer key errors with its own code (`pos-host --key-error-code A0`, CUP's
        # MAC-error code): an unMACed refusal that gives a K reason is a key error all the same.
        if rc == codes.KEY_ERROR or (
            reason is not None and rc != codes.APPROVED and 64 not in response.fields
        ):
            if reason is None:
                return Result(request.kind, "host_code", rc, response=response,
                              detail="14 without a K reason: the host's own code")
            return Result(request.kind, "key_error", rc, reason, "host", response)
        if request.kind == "signon":
            return self._signon_result(request, response, rc)
        if request.kind in MACED_KINDS:
            return self._maced_result(request.kind, data, response, rc)
        if request.kind == "signoff" and rc == codes.APPROVED:
            return Result(request.kind, "ok", rc, response=response,
                          keyset=self.keys.without_working())
        return Result(request.kind, "ok" if rc == codes.APPROVED else "refused", rc,
                      response=response)

    def _signon_result(self, request: Request, response: Message, rc: str) -> Result:
        if rc != codes.APPROVED:
            return Result("signon", "refused", rc, response=response)
        code = fields.Field60.parse(request.message.text(60)).nmic
        refused = refuse_key_set(response, code)
        if refused is not None:
            return Result("signon", "key_error", codes.KEY_ERROR, refused.reason, "terminal",
                          response, detail=f"{refused.detail} (the host answered {rc})")
        try:
            installed = self.verify_download(response.get(62), code)
        except TerminalKeyError as exc:
            return Result("signon", "key_error", codes.KEY_ERROR, exc.reason, "terminal",
                          response, detail=f"{exc.detail} (the host answered {rc})")
        return Result("signon", "ok", rc, response=response,
                      keyset=self.keys.with_working(installed, code))

    def verify_download(self, data: object, code: str) -> dict[str, StoredKey]:
        """Every key is checked (length, odd parity, check value) before any is accepted, so a
        corrupted download leaves the old keys in place and nothing half-installed."""
        tmk = self.keys.tmk
        if tmk is None:
            raise key_error("K1", "TMK", "not loaded")
        if not isinstance(data, bytes):
            raise key_error("K3", "WK", "no keys in download", "the 0810 approved without field 62")
        try:
            wrapped = fields.parse_key_set(data, code, self.dialect)
        except ProtocolError as exc:
            raise key_error("K3", "WK", "download corrupt", str(exc)) from None
        previous = self.keys.keys.get("MAK")
        generation = (previous.generation if previous else 0) + 1
        now = self.clock()
        accepted = {}
        for item in wrapped:
            algorithm = "DES" if len(item.ciphertext) == 8 else "TDES"
            try:
                key = unwrap_ecb(tmk.key, item.ciphertext, item.usage, algorithm)
            except CryptoError:
                raise key_error(
                    "K3", item.usage, "bad length/parity",
                    f"the downloaded {item.usage} has a wrong length or parity",
                ) from None
            if kcv(key.material, len(item.kcv)) != item.kcv:
                raise key_error(
                    "K3", item.usage, "KCV mismatch",
                    f"the downloaded {item.usage}'s check value differs from the one computed "
                    "under this terminal's TMK",
                )
            accepted[item.usage] = StoredKey(Key(key.algorithm, item.usage, key.material),
                                             generation, now)
        return accepted

    def _maced_result(self, kind: Kind, data: bytes, response: Message, rc: str) -> Result:
        """An answer that carries a MAC, or whose code says it must (§3, §7), is believed only
        once the MAC verifies; an unMACed refusal (30, 12, 03) is reported as it is."""
        if rc in codes.MACED_RESPONSE_CODES or 64 in response:
            mak = self.keys.keys.get("MAK")
            if 64 not in response:
                return Result(kind, "key_error", codes.KEY_ERROR,
                              KeyErrorReason("K3", "MAK", "no response MAC"), "terminal",
                              response, detail=f"the host answered {rc} without a MAC")
            if mak is None or not macing.verify(self.codec, data, mak.key):
                return Result(kind, "key_error", codes.KEY_ERROR,
                              KeyErrorReason("K3", "MAK", "response MAC bad"), "terminal",
                              response, detail=f"the host's {rc} fails MAC verification")
            return Result(kind, "approved" if rc == codes.APPROVED else "declined", rc,
                          response=response)
        return Result(kind, "refused", rc, response=response)
