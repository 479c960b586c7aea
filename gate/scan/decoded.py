"""What a decoder returns for one code: its exact bytes, as every decoding pass and backend reports them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodedCode:
    data: bytes
    format: str
    exact: bool  # False when the backend may have re-encoded the payload's bytes
    text: str  # the backend's reading as text (character set applied); gate decides on `data`
