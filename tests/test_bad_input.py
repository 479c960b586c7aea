"""Every bad input gets a short, clear error: no traceback, a non-zero exit, never an admit, nothing changed."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.cli import main
from gate.decide.passcache import PassCache

HOSTILE = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
MAX_OUTPUT = 4096


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    logging.getLogger().handlers.clear()
    return code, out.getvalue() + err.getvalue()


def assert_refused(code: int, output: str) -> None:
    assert code != 0
    assert len(output.encode("utf-8", "surrogateescape")) < MAX_OUTPUT, output[:300]
    assert "Traceback" not in output


TEXTISH = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"[gate]\nid = 1\n",
            b'[gate]\nid = "a\xff"\n',
            b"\xef\xbb\xbf[gate]\nid='x'\n[venue]\nid='v'\n[mqtt]\nport='1883'\n",
            b"[gate]\nid='a'\n[venue]\nid='v'\n[mqtt]\nusername='u'\npassword=987654321\n",
            b"[gate]\nid='" + b"x" * 100_000 + b"'\n",
            b"[[[[[[[[[[[",
            "token,status\n".encode("utf-16"),
            b"token,status\ntok-aaaa01,green\n" * 3 + b"tok-aaaa01,red\n",
            b"[" * 100_000 + b"\n",
        ]
    ),
)


@HOSTILE
@given(TEXTISH)
def test_check_config_refuses_hostile_files_briefly(tmp_path_factory, data: bytes) -> None:
    f = tmp_path_factory.mktemp("cfg") / "gate.toml"
    f.write_bytes(data)
    code, output = run("check-config", str(f))
    assert_refused(code, output)
    assert "987654321" not in output  # a secret is never echoed


@HOSTILE
@given(TEXTISH, st.sampled_from(["passes.csv", "passes.ndjson"]))
def test_cache_import_refuses_hostile_files_and_changes_nothing(tmp_path_factory, data: bytes, name: str) -> None:
    d = tmp_path_factory.mktemp("imp")
    db = d / "passes.db"
    with PassCache(db) as cache:
        cache.replace_all([("tok-keep01", 2, None, 1, None)], version=7)
    f = d / name
    f.write_bytes(data)
    code, output = run("cache", "--db", str(db), "import", str(f))
    assert_refused(code, output)
    with PassCache(db) as cache:
        entry = cache.lookup("tok-keep01")
        assert entry is not None and entry.revoked and cache.info().version == 7  # nothing silently changed


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size: a decompression bomb's header, with one empty data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


IMAGES = st.one_of(
    st.binary(max_size=300),
    st.builds(png_header, st.integers(1, 60_000), st.integers(1, 60_000)),
    st.sampled_from([png_header(20_000, 20_000), png_header(40_000, 2), b"\x89PNG\r\n\x1a\n", b"GIF89a"]),
)


@HOSTILE
@given(IMAGES)
def test_decode_refuses_hostile_images_briefly(tmp_path_factory, data: bytes) -> None:
    f = tmp_path_factory.mktemp("img") / "snap.png"
    f.write_bytes(data)
    code, output = run("decode", str(f))
    assert_refused(code, output)


@HOSTILE
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))))
def test_verify_never_admits_hostile_text(tmp_path_factory, keys_dir: Path, text: str) -> None:
    code, output = run("verify", "--trust", str(next(keys_dir.glob("*.pub"))), "GT1:" + text)
    assert code != 0 and "Traceback" not in output and len(output) < MAX_OUTPUT
    assert json.loads(output.splitlines()[-1])["decision"] != "admit"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    from gate.decide.keys import generate_keypair

    d = tmp_path_factory.mktemp("trust")
    generate_keypair(d)
    return d


def test_the_documented_cases_each_give_one_short_line(tmp_path) -> None:
    cases = {
        "port.toml": b"[gate]\nid='a'\n[venue]\nid='v'\n[mqtt]\nport = \"1883\"\n",
        "bool.toml": b"[gate]\nid='a'\n[venue]\nid='v'\n[gpio.relay]\npin=17\nactive_high = \"no\"\n",
        "latin1.toml": b"[gate]\nid='caf\xe9'\n",
    }
    expected = {"port.toml": "mqtt.port", "bool.toml": "gpio.relay.active_high", "latin1.toml": "line 2, column 8"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        code, output = run("check-config", str(tmp_path / name))
        assert code == 2 and expected[name] in output and len(output.splitlines()) <= 3
    big = tmp_path / "big.toml"
    big.write_bytes(b"[gate]\nid='" + b"x" * 10_000_000 + b"'\n[venue]\nid='v'\n")
    code, output = run("check-config", str(big))
    assert code == 2 and len(output) < 400 and "10000002 characters" in output


def test_an_unexpected_error_is_one_line_and_exit_70(tmp_path, monkeypatch) -> None:
    import gate.ops.status

    def boom(cfg, as_json: bool) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(gate.ops.status, "show_status", boom)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f"[gate]\nid='a'\nstate_dir='{tmp_path}'\n[venue]\nid='v'\n")
    code, output = run("status", "--config", str(cfg))
    assert code == 70 and "ZeroDivisionError: a bug" in output and "--debug" in output and "Traceback" not in output
    with pytest.raises(ZeroDivisionError):
        run("--debug", "status", "--config", str(cfg))


def test_imports_report_counts_that_match_the_table_and_never_weaken_it(tmp_path) -> None:
    db, f = tmp_path / "passes.db", tmp_path / "p.csv"
    f.write_text("token,status,revoked\ntok-new001,green,0\ntok-new001,green,0\ntok-new001,green,0\ntok-old001,red,0\n")
    code, output = run("cache", "--db", str(db), "import", str(f), "--merge")
    assert code == 0 and "imported 2 passes from 4 rows" in output and "holds 2 entries" in output
    with PassCache(db) as cache:
        assert cache.info().count == 2
    f.write_text("token,status,revoked\ntok-old001,green,0\ntok-old001,red,1\ntok-old001,yellow,0\n")
    code, output = run("cache", "--db", str(db), "import", str(f))
    assert code == 1 and "--on-duplicate" in output  # the revocation is not silently overwritten
    code, output = run("cache", "--db", str(db), "import", str(f), "--on-duplicate", "strictest")
    with PassCache(db) as cache:
        entry = cache.lookup("tok-old001")
        assert code == 0 and entry is not None and entry.revoked and cache.info().count == 1
    f.write_text("token,status\n")
    code, output = run("cache", "--db", str(db), "import", str(f))
    assert code == 1 and "--allow-empty" in output
    with PassCache(db) as cache:
        assert cache.info().count == 1  # not emptied


def test_the_images_source_decides_every_image_once(tmp_path, keys_dir) -> None:
    from PIL import Image

    from gate.scan.decoders import make_decoder
    from gate.scan.framegen import code_frame
    from gate.scanner import DecodingSource, Deduplicator, ImageSource, Scanner

    for i in range(6):
        Image.fromarray(code_frame(f"GT1:IMAGE{i}", invert=i % 2 == 1)).save(tmp_path / f"{i}.png")
    Image.fromarray(code_frame("GT1:BIG")).resize((6000, 6000)).save(tmp_path / "z-huge.png")
    scanner = Scanner(
        DecodingSource(ImageSource([tmp_path], max_pixels=20_000_000), make_decoder("zxing")), Deduplicator(3.0, 0.5)
    )
    seen = []
    for _ in range(10):
        seen += [s.payload for s in scanner.poll(0.05) or ()]
    assert seen == [f"GT1:IMAGE{i}".encode() for i in range(6)]  # the 36 MP one refused, not decoded
