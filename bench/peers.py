"""The serving benchmark's peers, each in a virtualenv of its own: Seldon's MLServer (scikit-learn runtime) and
`mlflow models serve`, serving the same fitted pipeline as this API.

The virtualenvs are built once and kept in READMIT_BENCH_CACHE (default ~/.cache/readmit-bench), one folder per
exact specification (the folder's name ends with a digest of the Python version, the requirements and the
pins), so a re-run reuses them and a change of the main stack's versions builds new ones. A virtualenv cannot be
moved once built (its scripts hold absolute paths), so it stays in the cache; everything a peer writes (its
model files, settings and logs) goes to the benchmark's temporary work folder.

The contract (`readmit_contract`, whose `EncounterFeatures` is the pipeline's first step) is not installed in
them: it comes from this checkout through PYTHONPATH at serve time (see `peer_environment`), so a peer always
unpickles the pipeline with the code that fitted it; its dependencies are installed, pinned to the main
virtualenv's versions, with numpy, pandas, scipy, scikit-learn and joblib (the same model must give the same
probabilities).

    python bench/peers.py      # build (or check) the peers' virtualenvs and print where they are
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CONTRACT_SRC = REPO / "shared" / "src"
MLSERVER_VERSION = "1.7.1"
MLSERVER_MODEL = "readmission"
"""The model's name in MLServer's repository (its endpoint is /v2/models/readmission/infer)."""
MODEL_PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "joblib", "threadpoolctl")
"""What unpickles and runs the fitted pipeline: pinned in every peer to the main virtualenv's versions."""


def cache_dir() -> Path:
    return Path(os.environ.get("READMIT_BENCH_CACHE") or Path.home() / ".cache" / "readmit-bench")


def _pinned(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


def contract_requirements() -> list[str]:
    """The contract's dependencies (shared/pyproject.toml), pinned to the main virtualenv's versions."""
    declared = tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())["project"]["dependencies"]
    return [_pinned(Requirement(d).name) for d in declared]


def main_stack_constraints() -> str:
    """The main virtualenv's installed distributions as a pip constraints file (this checkout's own packages,
    installed from folders, left out)."""
    lines = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or (dist.read_text("direct_url.json") or "").find('"dir_info"') >= 0:
            continue
        lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


@dataclass(frozen=True)
class PeerEnv:
    """A virtualenv: what pip installs into it (requirements, and a constraints file's text, maybe empty)."""

    name: str
    requirements: tuple[str, ...]
    constraints: str = ""

    @property
    def digest(self) -> str:
        """Of the Python version and the requirements (which pin what runs the model). The constraints only
        pin the rest when the virtualenv is built: a package added to the main stack builds no new one."""
        spec = "\n".join([sys.version, *self.requirements])
        return hashlib.sha256(spec.encode()).hexdigest()[:12]

    @property
    def folder(self) -> Path:
        return cache_dir() / "venvs" / f"{self.name}-{self.digest}"

    def bin(self, program: str) -> Path:
        return self.folder / "bin" / program


def mlserver_env() -> PeerEnv:
    """MLServer and its scikit-learn runtime. uvloop<0.22: with 0.23 MLServer 1.7.1's inference worker (a
    separate process, parallel_workers=1 by default) fails to start."""
    return PeerEnv(f"mlserver-{MLSERVER_VERSION}",
                   (f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", "uvloop<0.22",
                    *sorted({*map(_pinned, MODEL_PACKAGES), *contract_requirements()})))


def mlflow_env() -> PeerEnv:
    """MLflow, the same version as the main stack, with everything pinned to the main virtualenv (so the
    registered model loads exactly as the platform loads it: skops, the same scikit-learn)."""
    return PeerEnv(f"mlflow-{metadata.version('mlflow')}",
                   (_pinned("mlflow"), _pinned("skops"), *sorted({*map(_pinned, MODEL_PACKAGES),
                                                                  *contract_requirements()})),
                   main_stack_constraints())


def ensure(env: PeerEnv, say=print) -> PeerEnv:
    """Build ``env``'s virtualenv unless the cache holds it complete (a ``.complete`` marker written last; a
    half-built folder is removed and built again). A lock file keeps two runs from building it at once."""
    folder = env.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".complete").exists():
            return env
        shutil.rmtree(folder, ignore_errors=True)
        say(f"building the {env.name} virtualenv in {folder} (once; later runs reuse it)")
        log = folder.parent / f"{folder.name}.log"
        with open(log, "w") as out:
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, stdout=out,  # noqa: S603
                           stderr=subprocess.STDOUT)
            command = [str(env.bin("python")), "-m", "pip", "install", "--progress-bar", "off",
                       *env.requirements]
            if env.constraints:
                (folder / "constraints.txt").write_text(env.constraints)
                command += ["-c", str(folder / "constraints.txt")]
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603 - our own pins
        if done.returncode != 0:
            tail = "\n".join(line for line in log.read_text().splitlines()[-400:]
                             if "is ignored: it is neither a file nor a directory" not in line)
            raise RuntimeError(f"pip could not build the {env.name} virtualenv (log: {log}):\n{tail[-4000:]}")
        (folder / ".complete").write_text("\n".join(env.requirements) + "\n")
    return env


def versions(env: PeerEnv, *names: str) -> dict[str, str]:
    code = ("import json, sys\nfrom importlib import metadata\n"
            "print(json.dumps({n: metadata.version(n) for n in sys.argv[1:]}))")
    import json

    out = subprocess.run([str(env.bin("python")), "-c", code, *names],  # noqa: S603 - the peer's own python
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def peer_environment(env: PeerEnv) -> dict[str, str]:
    """Environment variables of a peer's process: its virtualenv first on PATH, the contract on PYTHONPATH."""
    return {"PATH": f"{env.folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(env.folder), "PYTHONPATH": str(CONTRACT_SRC),
            "UVICORN_ACCESS_LOG": "false",  # no access log (as this API: uvicorn --no-access-log)
            # one OpenMP thread per model call, as this API's inference thread (threadpool_limits(1)): with one
            # per core, HistGradientBoosting's threads spin against each other and against the server's own
            # threads on 2 shared cores (MLServer scored ~6x fewer requests/s that way in a trial)
            "OMP_NUM_THREADS": "1"}


def mlserver_repository(folder: Path, model_file: Path, *, max_batch_size: int, max_batch_time: float,
                        http_port: int, grpc_port: int, metrics_port: int) -> Path:
    """An MLServer model repository serving ``model_file`` (a joblib Pipeline) with the scikit-learn runtime.

    ``predict_fn: predict_proba`` makes the runtime answer ``predict_proba`` when a request names no output.
    ``max_batch_size`` 1: adaptive batching off; above 1: requests arriving within ``max_batch_time`` seconds
    are scored together (up to that many). ``debug: false``: no access log (as this API)."""
    import json

    model = folder / MLSERVER_MODEL
    model.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, model / "model.joblib")
    (folder / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "load_models_at_startup": True,
        # MLServer's folders default to the current directory (the checkout): here they stay in the work folder
        "metrics_dir": str(folder / ".metrics"), "environments_dir": str(folder / ".envs")}))
    (model / "model-settings.json").write_text(json.dumps({
        "name": MLSERVER_MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": max_batch_size, "max_batch_time": max_batch_time,
        "parameters": {"uri": "./model.joblib", "extra": {"predict_fn": "predict_proba"}}}))
    return folder


def v2_request(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Encounters as an Open Inference Protocol (V2) request for MLServer's pandas codec (``content_type: pd``):
    one input per column, the DataFrame the pipeline takes.

    This is what ``mlserver.codecs.PandasCodec.encode_request`` sends, built here because that codec fails on
    these frames: pandas 3 reads text columns as the ``str`` dtype, which it cannot map to a V2 datatype, and
    on an object column holding None it calls ``np.isnan``. So missing text is sent as the contract's own
    missing marker ``?`` (what the source file holds; the feature transform reads it exactly as null), text
    columns as BYTES with ``content_type: str`` (decoded to Python strings), numbers as INT64 or FP64."""
    from readmit_contract import MISSING

    inputs = []
    for name in records[0]:
        values = [r.get(name) for r in records]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            inputs.append({"name": name, "datatype": "INT64", "shape": [len(values), 1], "data": values})
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            inputs.append({"name": name, "datatype": "FP64", "shape": [len(values), 1],
                           "data": [float(v) for v in values]})
        else:
            data = [MISSING if v is None else str(v) for v in values]
            inputs.append({"name": name, "datatype": "BYTES", "shape": [len(values), 1], "data": data,
                           "parameters": {"content_type": "str"}})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def v2_probabilities(answer: dict[str, Any]) -> list[float]:
    """The probability of readmission (predict_proba's second column) of each encounter of a V2 answer."""
    (output,) = answer["outputs"]
    assert output["name"] == "predict_proba", output["name"]
    data = output["data"]
    return [float(p) for p in data[1::2]]


def main() -> None:
    for env in (mlserver_env(), mlflow_env()):
        ensure(env)
        names = ("mlserver", "mlserver-sklearn", "uvloop") if env.name.startswith("mlserver") else ("mlflow", "skops")
        found = versions(env, *names, "scikit-learn", "pandas", "numpy")
        print(f"{env.name}: {env.folder}  " + ", ".join(f"{k} {v}" for k, v in found.items()))


if __name__ == "__main__":
    main()
