"""Download path against a real HTTP server on loopback (tests never reach the internet)."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from readmit_contract import SchemaMismatchError
from readmit_contract.dataset import (
    ChecksumError,
    DatasetError,
    DownloadError,
    download,
    load_raw,
    read_raw_csv,
    sha256_of,
)
from readmit_contract.synthetic import write_csv


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def archive_server(tmp_path):
    """Serves tmp_path/www over HTTP on 127.0.0.1; yields (base URL, www dir)."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", www
    server.shutdown()
    server.server_close()


def _zip_with(csv: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.write(csv, "dataset_diabetes/diabetic_data.csv")
        zf.writestr("dataset_diabetes/IDS_mapping.csv", "admission_type_id,description\n1,Emergency\n")
    return dest


def test_download_verifies_extracts_and_caches(tmp_path, archive_server):
    base, www = archive_server
    csv = write_csv(tmp_path / "src.csv", 200, seed=1)
    _zip_with(csv, www / "data.zip")
    cache = tmp_path / "cache"
    path = download(cache, url=f"{base}/data.zip", expected_sha256=sha256_of(csv))
    assert path == cache / "diabetic_data.csv" and sha256_of(path) == sha256_of(csv)
    assert len(read_raw_csv(path)) == 200
    (www / "data.zip").unlink()  # second call is served from the cache
    assert download(cache, url=f"{base}/data.zip", expected_sha256=sha256_of(csv)) == path


def test_wrong_checksum_is_refused_and_nothing_cached(tmp_path, archive_server):
    base, www = archive_server
    _zip_with(write_csv(tmp_path / "src.csv", 50, seed=1), www / "data.zip")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="sha256"):
        download(cache, url=f"{base}/data.zip", expected_sha256=hashlib.sha256(b"other").hexdigest())
    assert list(cache.iterdir()) == []


def test_not_a_zip_is_a_download_error(tmp_path, archive_server):
    base, www = archive_server
    (www / "data.zip").write_text("<html>maintenance</html>")
    with pytest.raises(DownloadError, match="zip"):
        download(tmp_path / "cache", url=f"{base}/data.zip")


def test_no_network_is_a_clear_download_error(tmp_path):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="local path"):
        download(tmp_path / "cache", url=f"http://127.0.0.1:{port}/data.zip", timeout=5)


def test_local_path_and_its_errors(tmp_path):
    csv = write_csv(tmp_path / "d.csv", 30, seed=2)
    frame = load_raw(csv)
    assert len(frame) == 30
    assert (frame["max_glu_serum"] == "None").any()  # "None" stays a value, not NaN
    with pytest.raises(DatasetError, match="no data file"):
        load_raw(tmp_path / "absent.csv")
    frame.drop(columns=["A1Cresult"]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SchemaMismatchError, match="A1Cresult"):
        read_raw_csv(tmp_path / "short.csv")

