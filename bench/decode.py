#!/usr/bin/env python3
"""Decoder cost per frame and decode rate: gate's backends side by side with raw zxing-cpp and naive
pyzbar.decode(frame), on generated frames and on the photos in the sample folder. The read rate on degraded
frames (defocus, motion, glare, low light, noise, tilt, moire) is bench/degraded.py.

usage: bench/decode.py [--samples DIR] [--runs N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pyzbar import pyzbar

from _util import median, parse, table, time_calls
from gate.scan.decoders import DecodedCode, ZbarDecoder, ZxingDecoder, make_decoder
from gate.scan.framegen import code_frame
from gate.scanner import load_grey

CODE = "GT1:" + "6BFOXN*TS0BI$ZD.P9UOL97O4-2HH77HRM3HSZ3L+Q*UMV20/27NAK:L9%IQE4U:NJ 7ABE6P.5$MD-FFS2B3V9"


def scene(w: int, h: int) -> np.ndarray:
    """An empty camera view: smooth texture with sensor noise (no code)."""
    rng = np.random.default_rng(42)
    small = rng.integers(60, 200, (h // 16 + 1, w // 16 + 1)).astype(np.float64)
    big = np.kron(small, np.ones((16, 16)))[:h, :w]
    return np.clip(big + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


def noise(w: int, h: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w), np.uint8)


def frame_costs(runs: int) -> list[list[object]]:
    zx, zb = ZxingDecoder(), ZbarDecoder()
    rows = []
    for w, h in ((640, 480), (1280, 720)):
        frames = {
            "with code": code_frame(CODE, (w, h), scale=4),
            "no code": scene(w, h),
            "no code (flat)": np.full((h, w), 128, np.uint8),
            "no code (pure noise, worst case)": noise(w, h),
        }
        for label, f in frames.items():
            base = median(time_calls(lambda f=f: pyzbar.decode(f), runs))
            z = median(time_calls(lambda f=f: zx.decode(f), runs))
            b = median(time_calls(lambda f=f: zb.decode(f), runs))
            rows.append([f"{w}x{h}", label, f"{z:.2f}", f"{b:.2f}", f"{base:.2f}", f"{base / z:.1f}x"])
    return rows


def samples(root: Path) -> list[list[object]]:
    auto = make_decoder("auto")
    zx = ZxingDecoder()
    zb = ZbarDecoder()
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        n = got_auto = got_zx = got_zb = got_base = 0
        for txt in sorted(folder.glob("*.txt")):
            img = next((p for p in folder.glob(txt.stem + ".*") if p.suffix != ".txt"), None)
            if img is None:
                continue
            expected = txt.read_bytes()

            def hit(codes: list[DecodedCode], expected: bytes = expected) -> bool:
                return any(c.data == expected or c.text.encode() == expected for c in codes)

            try:
                frame = load_grey(img)
            except Exception:
                continue
            n += 1
            got_auto += hit(auto.decode_thoroughly(frame))
            got_zx += hit(zx.decode_thoroughly(frame))
            got_zb += hit(zb.decode(frame))
            got_base += any(bytes(r.data) == expected for r in pyzbar.decode(frame))
        rows.append([folder.name, n, got_auto, got_zx, got_zb, got_base])
    totals = [sum(int(r[i]) for r in rows) for i in range(1, 6)]
    rows.append(["all", *totals])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", default=str(Path(__file__).resolve().parents[2] / "shared" / "qr-samples"))
    ap.add_argument("--runs", type=int, default=200)
    args = parse(ap, runs=20)
    rows = frame_costs(args.runs)
    print("Median decode time per greyscale frame, ms (streaming mode: both polarities on every frame)")
    print(table(["frame", "content", "gate zxing", "gate zbar", "naive pyzbar.decode", "zxing speed-up"], rows))
    print("\n(Idle CPU is measured, not computed: bench/e2e.py --only idle)")
    root = Path(args.samples)
    if root.is_dir():
        print(f"\nDecode rate on {root} (images with a .txt expectation; payload bytes or text must match)")
        print(
            table(
                ["folder", "images", "gate auto (zxing+fallback)", "zxing", "gate zbar", "naive pyzbar"], samples(root)
            )
        )
    else:
        print(f"\n(no sample folder at {root}: decode rate skipped)")


if __name__ == "__main__":
    main()
