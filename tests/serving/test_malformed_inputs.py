"""A corpus of malformed and unusual request bodies, beyond schemathesis' generated cases, sent to the running
API's /predict and /predict/batch: every way JSON can be wrong or odd (truncated, trailing bytes, numbers JSON
does not allow, huge integers, duplicate keys, wrong types, deep nesting, huge strings and bodies), wrong
content types and encodings, non-UTF-8 bytes.

Every answer must be a 4xx (a 200 only where the input is valid), none a 5xx, none may carry a traceback, a
path or an exception's class name; afterwards the API predicts as before and its metrics counted no 5xx. A
100 MB body is refused (413) without the server reading it all or growing its memory.
"""

from __future__ import annotations

import codecs
import gzip
import json
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from readmit_contract import example_encounter

from .conftest import KEYS

pytestmark = pytest.mark.slow

CHECKOUT = str(Path(__file__).resolve().parents[2])
LEAKS = ("Traceback", 'File "', "site-packages", CHECKOUT, "127.0.0.1", "Error(", "ValueError", "TypeError",
         "KeyError", "RecursionError", "JSONDecodeError", "UnicodeDecodeError", "UnicodeEncodeError",
         "ValidationError", "RuntimeError", "AttributeError", "OverflowError", "Exception")
JSON = {"content-type": "application/json"}
CLIENT_ERRORS = {405, 413, 415, 422}


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    headers: dict[str, str]
    valid: bool | None = False
    """True: must be 200; False: must be a 4xx; None: either (a value the contract may accept)."""


def _enc() -> dict:
    return example_encounter()


def _text(obj) -> str:
    return json.dumps(obj)


def _field_text(field: str, literal: str) -> str:
    """A valid encounter's JSON with one field's value replaced by ``literal`` (raw JSON text)."""
    marker = "__MARKER__"
    return _text(_enc() | {field: marker}).replace(f'"{marker}"', literal)


def encounter_variants() -> list[tuple[str, str, bool | None]]:
    """(name, JSON text of one encounter, validity) — wrong or unusual inside one encounter."""
    valid = _text(_enc())
    deep = 100_000
    variants: list[tuple[str, str, bool | None]] = [
        ("valid", valid, True),
        ("valid, pretty", json.dumps(_enc(), indent=4), True),
        ("truncated", valid[: len(valid) // 2], False),
        ("truncated at a key", valid[: valid.index('"age"') + 3], False),
        ("trailing garbage", valid + "xyz", False),
        ("trailing brace", valid + "}", False),
        ("two documents", valid + valid, False),
        ("single quotes", valid.replace('"', "'"), False),
        ("comment", valid.replace("{", "{/* c */", 1), False),
        ("trailing comma", valid[:-1] + ",}", False),
        ("NaN", _field_text("time_in_hospital", "NaN"), False),
        ("Infinity", _field_text("time_in_hospital", "Infinity"), False),
        ("-Infinity", _field_text("num_medications", "-Infinity"), False),
        ("NaN in a nullable field", _field_text("weight", "NaN"), False),
        ("1e999", _field_text("time_in_hospital", "1e999"), False),
        ("-1e999", _field_text("num_medications", "-1e999"), False),
        ("1e308 in an integer field", _field_text("num_medications", "1e308"), False),
        ("5000-digit integer", _field_text("time_in_hospital", "9" * 5000), False),
        ("4000-digit integer", _field_text("time_in_hospital", "9" * 4000), False),
        ("5000-digit fraction", _field_text("time_in_hospital", "1." + "0" * 5000), None),
        ("hex number", _field_text("time_in_hospital", "0x10"), False),
        ("leading zero", _field_text("time_in_hospital", "05"), False),
        ("plus sign", _field_text("time_in_hospital", "+5"), False),
        ("float for an integer", _field_text("time_in_hospital", "3.5"), False),
        ("integral float", _field_text("time_in_hospital", "3.0"), None),
        ("negative zero", _field_text("num_procedures", "-0"), None),
        ("number as text", _field_text("time_in_hospital", '"3"'), False),
        ("boolean for an integer", _field_text("time_in_hospital", "true"), False),
        ("duplicate key", valid[:-1] + ', "age": "[10-20)"}', False),
        ("duplicate key, same value", valid[:-1] + ', "race": "Caucasian"}', False),
        ("lone high surrogate", _field_text("diag_1", '"\\ud800"'), False),
        ("lone low surrogate", _field_text("race", '"\\udc00"'), False),
        ("lone surrogate key", valid[:-1] + ', "\\ud800": 1}', False),
        ("surrogate pair (emoji)", _field_text("race", '"\\ud83d\\ude00"'), False),
        ("NUL escape", _field_text("diag_1", '"250\\u0000"'), False),
        ("raw control character", _field_text("diag_1", '"250\t83"'), False),
        ("unknown field", valid[:-1] + ', "readmitted": "<30"}', False),
        ("huge key", valid[:-1] + ', "' + "k" * 1_000_000 + '": 1}', False),
        ("huge string", _field_text("diag_1", '"' + "9" * 3_000_000 + '"'), False),
        ("many keys", valid[:-1] + "".join(f', "x{i}": {i}' for i in range(50_000)) + "}", False),
        ("nested 500 deep", _field_text("diag_1", "[" * 500 + "]" * 500), False),
        ("arrays 100k deep", "[" * deep + "]" * deep, False),
        ("objects 100k deep", '{"a":' * deep + "1" + "}" * deep, False),
        ("field nested 100k deep", _field_text("race", "[" * deep + "]" * deep), False),
        ("empty object", "{}", False),
        ("null", "null", False),
        ("top-level array", f"[{valid}]", False),
        ("top-level string", '"text"', False),
        ("top-level number", "1", False),
        ("only whitespace", "  \n\t ", False),
    ]
    wrong_types = ["[]", "{}", "true", '""', "1.5", "-1", "1000000", '"x"', '"' + "x" * 200 + '"', "null", '"?"']
    for name in _enc():
        for literal in wrong_types:
            variants.append((f"{name} = {literal[:12]}", _field_text(name, literal), None))
    return variants


def corpus() -> list[tuple[str, Case]]:
    """(path, case) pairs for both prediction routes."""
    cases: list[tuple[str, Case]] = []
    for name, text, valid in encounter_variants():
        cases.append(("/predict", Case(name, text.encode("utf-8", "surrogatepass"), JSON, valid)))
        batch = '{"encounters": [' + text + "]}"
        cases.append(("/predict/batch", Case(name, batch.encode("utf-8", "surrogatepass"), JSON, valid)))
        if name in ("NaN", "1e999", "duplicate key", "lone high surrogate", "arrays 100k deep"):  # top level too
            cases.append(("/predict/batch", Case(f"{name} (top level)", text.encode("utf-8", "surrogatepass"),
                                                 JSON, False)))
    one = _text(_enc())
    for path, valid_text in (("/predict", one), ("/predict/batch", '{"encounters": [' + one + "]}")):
        raw = valid_text.encode()
        for case in (
            Case("empty body", b"", JSON),
            Case("UTF-8 byte order mark", codecs.BOM_UTF8 + raw, JSON, True),
            Case("UTF-16 LE with BOM", valid_text.encode("utf-16"), JSON),
            Case("UTF-16 BE without BOM", valid_text.encode("utf-16-be"), JSON),
            Case("UTF-32", valid_text.encode("utf-32"), JSON),
            Case("Latin-1 byte", raw.replace(b'"Caucasian"', b'"Cauc\xe1sian"'), JSON),
            Case("invalid UTF-8 byte", raw.replace(b'"Caucasian"', b'"\xff\xfe"'), JSON),
            Case("overlong UTF-8", raw.replace(b'"Caucasian"', b'"\xc0\xaf"'), JSON),
            Case("CESU-8 surrogate bytes", raw.replace(b'"Caucasian"', b'"\xed\xa0\x80"'), JSON),
            Case("truncated UTF-8 sequence", raw[:-2] + b"\xe2\x82", JSON),
            Case("Content-Type text/plain", raw, {"content-type": "text/plain"}),
            Case("Content-Type form", b"race=Caucasian&age=%5B0-10%29",
                 {"content-type": "application/x-www-form-urlencoded"}),
            Case("Content-Type multipart", b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + raw
                 + b"\r\n--b--\r\n", {"content-type": "multipart/form-data; boundary=b"}),
            Case("no Content-Type", raw, {}),
            Case("Content-Type xml", raw, {"content-type": "application/xml"}),
            Case("Content-Type json, charset UTF-16", raw, {"content-type": "application/json; charset=utf-16"}),
            Case("Content-Type json, charset UTF-8", raw, {"content-type": "application/json; charset=UTF-8"}, True),
            Case("Content-Type +json", raw, {"content-type": "application/vnd.readmit+json"}, True),
            Case("Content-Type garbage", raw, {"content-type": ";;=;"}),
            Case("gzip body", gzip.compress(raw), JSON | {"content-encoding": "gzip"}),
            Case("gzip claimed, plain body", raw, JSON | {"content-encoding": "gzip"}),
            Case("br claimed", raw, JSON | {"content-encoding": "br"}),
            Case("identity encoding", raw, JSON | {"content-encoding": "identity"}, True),
        ):
            cases.append((path, case))
    enc = _text(_enc())
    for name, text in (
        ("0 encounters", '{"encounters": []}'),
        ("1001 encounters", '{"encounters": [' + ",".join([enc] * 1001) + "]}"),
        ("encounters null", '{"encounters": null}'),
        ("entry null", '{"encounters": [null]}'),
        ("one entry null", '{"encounters": [' + enc + ", null]}"),
        ("encounters an object", '{"encounters": ' + enc + "}"),
        ("encounters a string", '{"encounters": "x"}'),
        ("entry an array", '{"encounters": [[]]}'),
        ("entry a number", '{"encounters": [1]}'),
        ("no encounters key", '{"encounter": [' + enc + "]}"),
        ("encounters twice", '{"encounters": [' + enc + '], "encounters": []}'),
    ):
        cases.append(("/predict/batch", Case(name, text.encode(), JSON)))
    full = '{"encounters": [' + ",".join([enc] * 1000) + "]}"
    cases.append(("/predict/batch", Case("1000 encounters", full.encode(), JSON, True)))
    return cases


def leaks(text: str) -> list[str]:
    return [needle for needle in LEAKS if needle in text]


def server_process(api: str) -> psutil.Process:
    port = urlsplit(api).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid)
    raise AssertionError(f"no process listens on port {port}")


def five_xx(api: str) -> float:
    total = 0.0
    for line in httpx.get(f"{api}/metrics").text.splitlines():
        if line.startswith("readmit_api_requests_total{") and 'status="5' in line:
            total += float(line.split()[-1])
    return total


def stream_until_answered(api: str, path: str, declared_length: bool, total: int = 100 * 2**20) -> tuple[int, int]:
    """Stream a ``total``-byte body over a raw socket until the server answers; (status, bytes sent)."""
    host, port = urlsplit(api).hostname, urlsplit(api).port
    framing = f"Content-Length: {total}" if declared_length else "Transfer-Encoding: chunked"
    sent = 0
    chunk = b" " * 65536
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEYS['tests']}\r\n"
                     f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode())
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk if declared_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 "), f"no answer after {sent:,} bytes: {data!r}"
    return int(data.split()[1]), sent


def test_the_malformed_input_corpus_gets_4xx_never_5xx(api, http, encounters):
    reference = http.post("/predict", json=encounters[0]).json()
    errors_before = five_xx(api)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    cases = corpus()
    for path, case in cases:
        response = http.post(path, content=case.body, headers=case.headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        status = response.status_code
        where = f"{path} [{case.name}] -> {status}: {response.text[:300]!r}"
        if case.valid is True and status != 200:
            failures.append(f"valid input refused: {where}")
        elif case.valid is False and status not in CLIENT_ERRORS:
            failures.append(f"invalid input not refused: {where}")
        elif case.valid is None and status != 200 and status not in CLIENT_ERRORS:
            failures.append(f"neither answered nor refused: {where}")
        if leaks(response.text):
            failures.append(f"leaks {leaks(response.text)}: {where}")
        if status == 200:
            body = response.json()
            predictions = body["predictions"] if path == "/predict/batch" else [body]
            assert all(0 <= p["probability"] <= 1 for p in predictions if p["scored"]), where
        elif status in CLIENT_ERRORS:
            assert "detail" in response.json(), where
            assert len(response.content) < 20_000, f"long answer: {where}"
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:40])
    assert 500 not in statuses and statuses.get(422, 0) > 100 and statuses.get(415, 0) >= 10, statuses
    # the API still predicts what it predicted before, and counted no 5xx
    assert http.post("/predict", json=encounters[0]).json() == reference
    assert five_xx(api) == errors_before


@pytest.mark.parametrize("declared_length", [False, True], ids=["chunked", "content-length"])
def test_a_100_mb_body_is_refused_without_being_read(api, http, declared_length):
    server = server_process(api)
    rss_before = server.memory_info().rss
    for path in ("/predict", "/predict/batch"):
        status, sent = stream_until_answered(api, path, declared_length)
        assert status == 413, path
        assert sent < 50 * 2**20, f"the server read {sent:,} bytes before refusing"
    time.sleep(0.5)
    growth = server.memory_info().rss - rss_before
    assert growth < 40 * 2**20, f"the server grew by {growth:,} bytes"
    assert http.post("/predict", json=example_encounter()).status_code == 200
