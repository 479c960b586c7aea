"""The `gate` command: parses arguments and dispatches to the modules that do the work."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gate import __version__
from gate.config.model import DEFAULT_PATH, Config, load_config
from gate.core.address import broker_address
from gate.core.errors import ConfigError, GateError
from gate.core.logs import setup_logging

Handler = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    from gate.ops.preflight import act_as_state_owner

    cfg = load_config(Path(args.config))
    act_as_state_owner(cfg.gate.state_dir)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    from gate.ops.preflight import check_config

    return check_config(Path(args.path))


def cmd_camera(args: argparse.Namespace) -> int:
    from gate.scan.aim import run_aim

    save = Path(args.save) if args.save else None
    return run_aim(_config(args), args.seconds, args.interval, args.sweep, args.steps, save, args.json)


def cmd_run(args: argparse.Namespace) -> int:
    from gate.lane.daemon import run_daemon

    _config(args)  # a root-started daemon acts as the owner of its state, like every maintenance command
    return run_daemon(Path(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from gate.demo.run import run_demo
    except ModuleNotFoundError as exc:  # segno, from the demo extra
        raise GateError(f"gate demo needs {exc.name}: pip install 'gate[demo]' (./install.sh --dev has it)") from None

    state = Path(args.state_dir) if args.state_dir else None
    return run_demo(
        args.once, args.broker, args.timeout, state, as_json=args.json, metrics=args.metrics or "", venue=args.venue
    )


def cmd_decode(args: argparse.Namespace) -> int:
    from gate.scan.decoders import make_decoder
    from gate.scanner import image_files, load_grey

    decoder = make_decoder(args.decoder, tuple(args.format or ("qr",)))
    found_any = False
    for path in image_files(Path(p) for p in args.images):
        try:
            frame = load_grey(path, args.max_pixels)
        except GateError as exc:
            print(json.dumps({"image": str(path), "error": str(exc)}) if args.json else f"{path}: ERROR {exc}")
            continue
        start = time.perf_counter()
        codes = decoder.decode_thoroughly(frame)
        ms = (time.perf_counter() - start) * 1000
        found_any = found_any or bool(codes)
        if args.json:
            out = [
                {
                    "text": c.text,
                    "bytes_b64": base64.b64encode(c.data).decode(),
                    "format": c.format,
                    "exact_bytes": c.exact,
                }
                for c in codes
            ]
            print(json.dumps({"image": str(path), "codes": out, "ms": round(ms, 3)}))
        else:
            texts = ", ".join(repr(c.text) for c in codes) or "no code"
            print(f"{path}: {texts} ({ms:.1f} ms, {decoder.name})")
    return 0 if found_any else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from gate.decide.verify import verify_once

    result = verify_once(args.code, Path(args.config) if args.config else None, [Path(t) for t in args.trust])
    print(json.dumps(result))
    return 0 if result["decision"] == "admit" else 3


def cmd_cache(args: argparse.Namespace) -> int:
    from gate.decide import passimport
    from gate.decide.passcache import PassCache

    opened = passimport.open_rows(Path(args.file)) if args.cache_cmd == "import" else None  # as the invoker
    db = Path(args.db) if args.db else _config(args).gate.state_dir / "passes.db"
    with PassCache(db) as cache:
        if args.cache_cmd == "import":
            start = time.perf_counter()
            r = cache.import_rows(
                passimport.iter_rows(Path(args.file), opened),
                merge=args.merge,
                on_duplicate=args.on_duplicate,
                allow_empty=args.allow_empty,
                version=args.version,
            )
            secs = time.perf_counter() - start
            dup = f"; {r.identical} identical repeated rows merged" if r.identical else ""
            dup += (
                f"; {r.resolved} conflicting rows resolved by --on-duplicate {args.on_duplicate}" if r.resolved else ""
            )
            print(
                f"imported {r.passes} passes from {r.lines} rows of {args.file} in {secs:.2f}s "
                f"({r.lines / max(secs, 1e-9):,.0f} rows/s){dup}; the cache now holds {r.entries} entries"
            )
        elif args.cache_cmd == "stats":
            info = cache.info()
            age = None if info.synced_at is None else round(time.time() - info.synced_at)
            print(
                json.dumps(
                    {
                        "path": str(db),
                        "version": info.version,
                        "seq": info.seq,
                        "entries": info.count,
                        "synced_at": info.synced_at,
                        "age_s": age,
                    }
                )
            )
        else:
            entry = cache.lookup(args.token)
            if entry is None:
                print(json.dumps({"token": args.token, "found": False}))
                return 1
            print(
                json.dumps(
                    {
                        "token": entry.token,
                        "found": True,
                        "status": entry.status.value,
                        "valid_until": entry.valid_until,
                        "revoked": entry.revoked,
                        "companions": entry.companions,
                    }
                )
            )
    return 0


def cmd_central(args: argparse.Namespace) -> int:
    from gate.central.cli import main as central_main

    return central_main(args.central_args)


def cmd_selftest(args: argparse.Namespace) -> int:
    from gate.actuate.selftest import selftest

    return selftest(_config(args))


def cmd_status(args: argparse.Namespace) -> int:
    from gate.ops.status import show_status

    return show_status(_config(args), args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate", description="Turnstile firmware service: scan, verify, admit, record.")
    p.add_argument("--version", action="version", version=f"gate {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler, help: str, config: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if config:
            sp.add_argument(
                "--config",
                default=os.environ.get("GATE_CONFIG", str(DEFAULT_PATH)),
                help=f"config file (default $GATE_CONFIG or {DEFAULT_PATH})",
            )
        return sp

    add("run", cmd_run, "run the gate daemon (what systemd starts)", config=True)
    sp = add("demo", cmd_demo, "the whole gate on any machine: simulated camera and pins")
    sp.add_argument("--once", action="store_true", help="run the script once; exit 0 when the broker has acked all")
    sp.add_argument("--broker", type=broker_address, help="publish check-ins to this broker, HOST:PORT")
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for acks with --once")
    sp.add_argument("--state-dir", help="keep the demo's state here instead of a temp dir")
    sp.add_argument("--venue", choices=["station", "bus"], default="station", help="bus: a GPS track on a pty")
    sp.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics and /healthz here (e.g. 127.0.0.1:9108)")
    sp.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (start, decision, passage, delivered, done) instead of the table",
    )
    sp = add("check-config", cmd_check_config, "validate a config file; exit 2 naming each bad key")
    sp.add_argument("path")
    sp = add("decode", cmd_decode, "decode codes in image files (camera snapshots)")
    sp.add_argument("--decoder", choices=["auto", "zxing", "zbar"], default="auto")
    sp.add_argument("--format", action="append", choices=["qr", "micro_qr", "datamatrix", "aztec", "pdf417"])
    sp.add_argument("--json", action="store_true", help="one JSON line per image")
    sp.add_argument("--max-pixels", type=int, default=25_000_000, help="refuse larger images before decoding")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp = add("verify", cmd_verify, "decide on a code's text without actuating or publishing")
    sp.add_argument("--config", help="use this gate's config, cache and policy")
    sp.add_argument("--trust", action="append", default=[], metavar="PUBLIC_KEY_FILE")
    sp.add_argument("code")
    sp = add("cache", cmd_cache, "the cached pass status", config=True)
    sp.add_argument("--db", help="cache file (default: <state_dir>/passes.db from the config)")
    csub = sp.add_subparsers(dest="cache_cmd", required=True)
    ci = csub.add_parser("import", help="replace the cache with a CSV/NDJSON file (atomic)")
    ci.add_argument("file")
    ci.add_argument("--merge", action="store_true", help="upsert rows instead of replacing the whole cache")
    ci.add_argument("--version", type=int, help="snapshot version to record")
    ci.add_argument(
        "--on-duplicate",
        choices=["last", "strictest"],
        help="a token on several rows with different values: keep the last row, or the strictest "
        "(a revocation beats red beats yellow beats green); without it such a file is refused",
    )
    ci.add_argument("--allow-empty", action="store_true", help="let a file with no rows empty the cache")
    csub.add_parser("stats", help="version, entries and age")
    cl = csub.add_parser("lookup", help="one token's cached status")
    cl.add_argument("token")
    sp = sub.add_parser("central", help="reference central tools: keys, codes, publishing, collection", add_help=False)
    sp.set_defaults(fn=cmd_central)
    sp.add_argument("central_args", nargs=argparse.REMAINDER, help="see `gate central --help`")
    sp = add("camera", cmd_camera, "camera tools for installers at the lane", config=True)
    aim = sp.add_subparsers(dest="camera_cmd", required=True).add_parser(
        "aim", help="print focus, brightness, clipping and reads/s a few times a second (no frame is kept)"
    )
    aim.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    aim.add_argument("--interval", type=float, default=0.33, help="seconds between reports")
    aim.add_argument("--sweep", action="store_true", help="step the focus across its range; print the best")
    aim.add_argument("--steps", type=int, default=16, help="lens positions tried by --sweep")
    aim.add_argument("--save", metavar="FILE", help="write one frame (PNG, mode 0600) at the end; only on request")
    aim.add_argument("--json", action="store_true", help="one JSON object per report")
    add("selftest", cmd_selftest, "cycle every output, report every input", config=True)
    sp = add("status", cmd_status, "the running daemon's state", config=True)
    sp.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "central":
        args.central_args = [*rest, *args.central_args]  # its options, --help included, are its own
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    setup_logging(args.verbose or args.debug)
    # Ctrl-C (SIGINT) stops every command, even when started by a parent that ignores it (a job put in the
    # background by a script, a test runner's worker): Python leaves an inherited "ignore" in place otherwise.
    if threading.current_thread() is threading.main_thread():  # (signal handlers are the main thread's only)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"config error:\n{_short(str(exc), 3000)}", file=sys.stderr)
        return 2
    except GateError as exc:
        print(f"gate: {_short(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gate: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an input nothing above expected: one line, never a traceback
        if args.debug:
            raise
        print(
            f"gate {args.command}: unexpected {type(exc).__name__}: {_short(str(exc), 200)} (run with --debug "
            "for details)",
            file=sys.stderr,
        )
        return 70


def _short(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
