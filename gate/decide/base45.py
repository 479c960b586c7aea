"""Base45 (RFC 9285): bytes to QR alphanumeric-mode text and back."""

from gate.core.errors import CodeError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def b45encode(data: bytes) -> str:
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        e, n = divmod(n, 45 * 45)
        d, c = divmod(n, 45)
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def b45decode(text: str) -> bytes:
    try:
        vals = [_INDEX[c] for c in text]
    except KeyError as exc:
        raise CodeError("malformed", f"character {exc.args[0]!r} is not base45") from None
    if len(vals) % 3 == 1:
        raise CodeError("malformed", "base45 text has an impossible length")
    out = bytearray()
    for i in range(0, len(vals), 3):
        chunk = vals[i : i + 3]
        n = sum(v * 45**k for k, v in enumerate(chunk))
        if len(chunk) == 3:
            if n > 0xFFFF:
                raise CodeError("malformed", "base45 triplet out of range")
            out += n.to_bytes(2, "big")
        else:
            if n > 0xFF:
                raise CodeError("malformed", "base45 pair out of range")
            out.append(n)
    return bytes(out)
