"""The contract between training and serving about a model version's artifact.

Training records, on every registered version, the digest of the version's model folder as
MLflow hands it out (tag ``artifact_sha256``). Serving downloads the folder, and loads it only if

1. its digest equals the recorded one (no file edited, added, removed or renamed since training);
2. its ``MLmodel`` declares the scikit-learn flavor saved with skops (never pickle or cloudpickle,
   which run code when loaded), and ships no Python code of its own;
3. every type the skops file would build, beyond those skops trusts by itself, comes from
   scikit-learn or this contract (``ALLOWED_MODULE_PREFIXES``).

A folder that fails is refused with ``ArtifactRefused``: a short machine ``code`` (a metric label)
and a ``reason`` a person can act on, free of paths, hosts and library error text (``details``
carries those, for the log only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

DIGEST_TAG = "artifact_sha256"
"""Model-version tag holding ``artifact_digest`` of the version's artifact, set by training."""

ALLOWED_MODULE_PREFIXES: tuple[str, ...] = ("sklearn.", "readmit_contract.")
"""Modules whose types a served model may hold beyond skops' defaults: scikit-learn's and the contract's."""

MLMODEL_FILE = "MLmodel"
SKLEARN_FLAVOR = "sklearn"
SKOPS_FORMAT = "skops"

CLIENT_WRITTEN_FILES = frozenset({"registered_model_meta"})
"""Files at the folder's root that the MLflow client writes itself when it downloads ``models:/NAME/VERSION``
(the model's name and version, overwritten on every download): not part of what the store holds."""

REFUSAL_CODES: tuple[str, ...] = ("no_checksum", "checksum_mismatch", "unsafe_format", "unsafe_types")

_CHUNK = 1 << 20


class ArtifactRefused(Exception):
    """A model artifact that must not be loaded: ``code`` for machines, ``reason`` for people."""

    def __init__(self, code: str, reason: str, details: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.details = details
        """What exactly was found (may name files or types): for the log, never for a response body."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_files(folder: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths of every file under ``folder``, sorted (the client-written files left out)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    found: list[str] = []
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative not in CLIENT_WRITTEN_FILES:
                found.append(relative)
    return sorted(found)


def artifact_digest(folder: str | os.PathLike[str]) -> str:
    """sha256 over the folder's files: each sorted relative path with its content's sha256.

    Editing, adding, removing or renaming any file changes it; where the folder lies does not.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for relative in artifact_files(root):
        digest.update(relative.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
        digest.update(_file_sha256(root / relative).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def foreign_types(type_names: Iterable[str]) -> list[str]:
    """The names among ``type_names`` that come from neither scikit-learn nor the contract."""
    return [name for name in type_names if not name.startswith(ALLOWED_MODULE_PREFIXES)]


def recorded_digest(tags: dict[str, str]) -> str:
    """The digest training recorded in a model version's ``tags`` (``ArtifactRefused`` when there is none):
    checked before anything is downloaded."""
    expected = (tags.get(DIGEST_TAG) or "").strip().lower()
    if not expected:
        raise ArtifactRefused("no_checksum", "no checksum was recorded for it at training",
                              f"model version has no {DIGEST_TAG} tag")
    return expected


def verify_digest(folder: str | os.PathLike[str], expected: str | None) -> None:
    """Raise ``ArtifactRefused`` unless the folder's digest is ``expected`` (the version's tag)."""
    expected = recorded_digest({DIGEST_TAG: expected or ""})
    actual = artifact_digest(folder)
    if actual != expected:
        raise ArtifactRefused("checksum_mismatch", "its artifact does not match the checksum recorded at training",
                              f"{DIGEST_TAG} tag {expected!r}, downloaded artifact {actual}")


def _read_mlmodel(root: Path) -> dict[str, Any]:
    import yaml

    path = root / MLMODEL_FILE
    if not path.is_file():
        raise ArtifactRefused("unsafe_format", "it is not an MLflow model (no MLmodel file)", f"{path} missing")
    try:
        mlmodel = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArtifactRefused("unsafe_format", "its MLmodel file cannot be read", repr(exc)) from exc
    if not isinstance(mlmodel, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise ArtifactRefused("unsafe_format", "its MLmodel file declares no model flavors", repr(mlmodel)[:500])
    return mlmodel


def _model_file(root: Path, sklearn: dict[str, Any]) -> Path:
    name = sklearn.get("pickled_model")
    if not isinstance(name, str) or not name:
        raise ArtifactRefused("unsafe_format", "its MLmodel file names no model file", repr(name))
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ArtifactRefused("unsafe_format", "its MLmodel file points outside the model folder", name)
    path = root / relative
    if not path.is_file():
        raise ArtifactRefused("unsafe_format", "its model file is missing", name)
    return path


def verify_format_and_types(folder: str | os.PathLike[str]) -> list[str]:
    """Check the folder's MLmodel and skops file; return the skops file's untrusted types (all allowed).

    Raises ``ArtifactRefused`` (``unsafe_format`` or ``unsafe_types``) otherwise.
    """
    root = Path(folder)
    flavors = _read_mlmodel(root)["flavors"]
    sklearn = flavors.get(SKLEARN_FLAVOR)
    if not isinstance(sklearn, dict):
        raise ArtifactRefused("unsafe_format", "it is not a scikit-learn model",
                              f"flavors: {sorted(map(str, flavors))}")
    serialization = sklearn.get("serialization_format", "pickle")  # MLflow's default when the key is absent
    if serialization != SKOPS_FORMAT:
        raise ArtifactRefused("unsafe_format",
                              "it is saved with pickle, which can run code when loaded (only skops is accepted)",
                              f"serialization_format: {serialization!r}")
    shipping_code = sorted(str(f) for f, conf in flavors.items() if isinstance(conf, dict) and conf.get("code"))
    if shipping_code:
        raise ArtifactRefused("unsafe_format", "it ships Python code to import when loaded",
                              f"flavors with code paths: {shipping_code}")
    listed = sklearn.get("skops_trusted_types") or []
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise ArtifactRefused("unsafe_format", "its MLmodel file lists trusted types in an unknown form", repr(listed))
    model_file = _model_file(root, sklearn)

    import skops.io

    try:
        untrusted = list(skops.io.get_untrusted_types(file=model_file))
    except Exception as exc:  # noqa: BLE001 - not a readable skops file, whatever the reason
        raise ArtifactRefused("unsafe_format", "its model file cannot be read as a skops file",
                              f"{type(exc).__name__}: {exc}") from exc
    foreign = sorted(set(foreign_types(untrusted)) | set(foreign_types(listed)))
    if foreign:
        raise ArtifactRefused("unsafe_types",
                              "its model holds types from outside scikit-learn and the feature contract",
                              f"foreign types: {foreign[:20]}")
    return untrusted


def verify_artifact(folder: str | os.PathLike[str], expected_digest: str | None) -> list[str]:
    """All the checks, digest first: what serving runs before loading a downloaded version."""
    verify_digest(folder, expected_digest)
    return verify_format_and_types(folder)


def download_registered(client: Any, name: str, version: str, folder: Path, tracking_uri: str | None = None) -> Path:
    """Download registered version ``name``/``version`` into ``folder``, emptied first (a folder left by an
    earlier download must not add files to the digest). Returns the model folder.

    The version's location is asked of ``client`` (an ``mlflow.MlflowClient``) itself: MLflow's
    ``models:/`` URIs resolve through the process-wide registry URI, whatever tracking URI is passed along.
    Training (to record the digest) and serving (to check it) download the same way."""
    import shutil

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    repository = get_artifact_repository(client.get_model_version_download_uri(name, version),
                                         tracking_uri=tracking_uri)
    return Path(repository.download_artifacts("", dst_path=str(folder)))


def load_verified(client: Any, name: str, version: str, tags: dict[str, str], folder: Path,
                  tracking_uri: str | None = None) -> Any:
    """The version's Pipeline, loaded from ``folder`` only once its artifact passed every check: the
    checksum recorded at training (``tags``, the version's), skops format, allowed types
    (``ArtifactRefused`` otherwise; a version without a checksum is refused before anything is downloaded,
    and nothing refused stays in ``folder``)."""
    import shutil

    import mlflow

    expected = recorded_digest(tags)
    local = download_registered(client, name, version, folder, tracking_uri)
    try:
        verify_artifact(local, expected)
    except ArtifactRefused:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return mlflow.sklearn.load_model(str(local))
