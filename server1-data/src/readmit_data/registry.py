"""Registering the best candidate together with its promotion decision, then moving the alias.

The order makes a failure at any step leave nothing half-done, and a retry finish the job:

1. The current champion is looked up. A registry error (unreachable, timeout, 5xx, 401, 403, ...) stops
   the task with a ``RegistryError``: only "the registered model does not exist"
   (``RESOURCE_DOES_NOT_EXIST``) or "it has no champion alias" means that there is no champion yet.
2. The decision is made before anything is written to the registry. The candidate's logged model is
   downloaded and checked against the artifact contract (skops, allowed types; its checksum computed);
   its model card is built and stored on its run (``readmit_data.model_card``; reused when a retry
   finds it there); the champion is loaded through serving's own checks; both are scored on today's
   validation rows and compared by a paired bootstrap over patients, corrected for the run's best-of-N
   pick (``readmit_data.gate``); then the card's calibration and subgroups must not be worse than the
   champion's beyond the configured limits and the noise.
   A champion that cannot be loaded (refused by the checks, failing to load or to score) is an
   explicit decision, ``champion_unloadable``, with its reason: the candidate replaces it.
3. The version is created with its decision, its figures and its checksums (artifact, card) as tags, in one registry
   call: no version ever exists without its decision.
4. The alias moves (``champion`` if promoted, else ``challenger``) and the decision is copied to the run.

A retry finds the version this run already registered (by run id), completes its alias and run tags,
and never creates a second one. If the champion moved since the recorded decision, the decision is
made again against the new champion and the version's tags updated before the alias moves.

A champion's test-set metrics are computed once, when it first becomes champion.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from readmit_contract import TARGET, artifact
from readmit_contract.artifact import (
    DIGEST_TAG,
    ArtifactRefused,
    artifact_digest,
    download_registered,
    verify_format_and_types,
)
from readmit_contract.card import CARD_DIGEST_TAG, ModelCard
from sqlalchemy import Engine

from .candidates import PATIENT_COLUMN
from .gate import Comparison, calibration_check, paired_bootstrap, subgroup_checks
from .mlflow_access import RegistryError, is_not_found, registry_call
from .model_card import build_card, group_values, log_card, read_card
from .settings import DataSettings
from .stores import clean_encounters
from .training import CandidateResult, evaluate, read_split

TEST_TAG_PREFIX = "test_"
TEST_DONE_TAG = "test_rows"
"""Set last when a champion's test metrics are recorded: their completion marker."""
DECISION_TAG = "promotion.decision"
PROMOTED_TAG = "promotion.promoted"
CHAMPION_TAG = "promotion.champion"
"""The champion version the decision was made against ("none": there was none)."""
REASON_TAG = "promotion"

FIRST_MODEL = "first_model"
BETTER = "better"
NOT_BETTER = "not_better"
WORSE_CALIBRATION = "worse_calibration"
"""Better ROC-AUC, but its calibration is worse than the champion's beyond the limit (the model card's check)."""
WORSE_SUBGROUP = "worse_subgroup"
"""Better ROC-AUC, but worse than the champion for a subgroup of its model card beyond the limit."""
CHAMPION_UNLOADABLE = "champion_unloadable"
DECISIONS = (FIRST_MODEL, BETTER, NOT_BETTER, WORSE_CALIBRATION, WORSE_SUBGROUP, CHAMPION_UNLOADABLE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """Whether a candidate takes the champion alias, why, and the figures it rests on."""

    kind: str
    promoted: bool
    reason: str
    champion_version: str | None
    figures: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            REASON_TAG: self.reason,
            DECISION_TAG: self.kind,
            PROMOTED_TAG: "true" if self.promoted else "false",
            CHAMPION_TAG: self.champion_version or "none",
            **self.figures,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Decision | None:
        """The decision recorded on a version, None if it has none."""
        if tags.get(DECISION_TAG) not in DECISIONS or REASON_TAG not in tags:
            return None
        champion = tags.get(CHAMPION_TAG, "none")
        return cls(kind=tags[DECISION_TAG], promoted=tags.get(PROMOTED_TAG) == "true", reason=tags[REASON_TAG],
                   champion_version=None if champion == "none" else champion,
                   figures={k: v for k, v in tags.items() if k.startswith("gate.")})


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    candidate: str
    run_id: str
    promoted: bool
    alias: str
    reason: str
    candidate_roc_auc: float
    champion_roc_auc: float | None
    previous_champion: str | None
    decision: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    reused: bool = False
    """True when a retry found the version already registered by this run and completed it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_candidate(results: list[CandidateResult]) -> CandidateResult:
    if not results:
        raise ValueError("no candidate was trained")
    return max(results, key=lambda r: r.metrics["roc_auc"])


def _client(settings: DataSettings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri)


def current_champion(settings: DataSettings):
    """The model version holding the champion alias, or None when the registered model does not exist or has
    no such alias. Any other registry failure raises ``RegistryError``: it never passes for "no champion"."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    name, alias = settings.model_name, settings.model_alias
    with registry_call(settings, f"looking up {name}@{alias}", "nothing was registered or promoted"):
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise
        version = (registered.aliases or {}).get(alias)
        if version is None:
            return None
        return client.get_model_version(name, str(version))


def record_artifact_digest(settings: DataSettings, version: str) -> str:
    """Tag ``version`` with the digest of its artifact as MLflow stores it, after checking the artifact meets the
    contract (skops, allowed types: ``ArtifactRefused`` otherwise, and no tag). Returns the digest.

    For versions registered before checksums existed (``readmit-data record-checksum``): training registers
    each version with its digest."""
    client = _client(settings)
    with registry_call(settings, f"recording the checksum of {settings.model_name} v{version}", "no tag was set"):
        with tempfile.TemporaryDirectory(prefix="readmit-register-") as tmp:
            folder = download_registered(client, settings.model_name, version, Path(tmp) / "model",
                                         settings.mlflow_tracking_uri)
            verify_format_and_types(folder)
            digest = artifact_digest(folder)
        client.set_model_version_tag(settings.model_name, version, DIGEST_TAG, digest)
    return digest


def load_verified(settings: DataSettings, version: str):
    """The Pipeline of a registered version, loaded only if its artifact passes serving's checks
    (``ArtifactRefused`` otherwise)."""
    client = _client(settings)
    tags = dict(client.get_model_version(settings.model_name, version).tags)
    with tempfile.TemporaryDirectory(prefix="readmit-verify-") as tmp:
        return artifact.load_verified(client, settings.model_name, version, tags, Path(tmp) / "model",
                                      settings.mlflow_tracking_uri)


def _load_champion(settings: DataSettings, champion) -> tuple[Any, str | None]:
    """(the champion's Pipeline, None), or (None, why it cannot be used). Registry errors raise."""
    try:
        with registry_call(settings, f"downloading champion v{champion.version} of {settings.model_name}",
                           "nothing was registered or promoted"):
            return load_verified(settings, str(champion.version)), None
    except ArtifactRefused as refused:
        log.warning("champion v%s is refused (%s): %s", champion.version, refused.code, refused.details)
        return None, f"its artifact is refused ({refused.code}: {refused.reason})"
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a local load failure, whatever the library raises
        log.warning("champion v%s cannot be loaded", champion.version, exc_info=True)
        return None, f"it cannot be loaded ({type(exc).__name__})"


def _unloadable(best: CandidateResult, champion_version: str, why: str) -> Decision:
    return Decision(
        kind=CHAMPION_UNLOADABLE, promoted=True, champion_version=champion_version,
        reason=(f"promoted: champion v{champion_version} cannot be used: {why}; {best.candidate} "
                f"validation ROC-AUC {best.metrics['roc_auc']:.4f} replaces it"),
    )


def _card_groups(card: ModelCard, validation: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """The subgroups of the card's validation assessment (not the small ones), as row masks of ``validation``."""
    groups = []
    for table in card.evaluation["validation"].subgroups:
        if table.attribute not in validation.columns:
            continue
        values = group_values(validation, table.attribute)
        for group in table.groups:
            if not group.small:
                groups.append((table.attribute, group.group, np.isin(values, group.members)))
    return groups


def _compare(settings: DataSettings, best: CandidateResult, champion_version: str, champion_model: Any,
             candidate_model: Any, validation: pd.DataFrame, card: ModelCard, candidates: int) -> Decision:
    """The champion and the candidate on the same validation rows: the ROC-AUC lead (paired patient bootstrap,
    corrected for the run's best-of-N pick), then what the candidate's model card adds: its calibration and
    its subgroups must not be worse than the champion's beyond the configured limits and the noise."""
    try:
        champion_proba = champion_model.predict_proba(validation)[:, 1]
    except Exception as exc:  # noqa: BLE001 - whatever makes the champion unusable on today's rows
        log.warning("champion v%s cannot score the validation rows", champion_version, exc_info=True)
        return _unloadable(best, champion_version, f"it fails to score the validation rows ({type(exc).__name__})")
    y = validation[TARGET].to_numpy()
    patients = validation[PATIENT_COLUMN].to_numpy()
    candidate_proba = candidate_model.predict_proba(validation)[:, 1]
    comparison: Comparison = paired_bootstrap(
        y, candidate_proba, champion_proba, patients, candidates=candidates,
        confidence=settings.promotion_confidence, samples=settings.promotion_bootstrap_samples,
        min_delta=settings.promotion_min_delta, seed=settings.random_seed,
    )
    calibration = calibration_check(y, candidate_proba, champion_proba, patients,
                                    confidence=settings.promotion_confidence,
                                    max_worsening=settings.promotion_max_calibration_worsening,
                                    seed=settings.random_seed)
    groups = subgroup_checks(y, candidate_proba, champion_proba, patients, _card_groups(card, validation),
                             confidence=settings.promotion_confidence, samples=settings.promotion_bootstrap_samples,
                             max_drop=settings.promotion_max_subgroup_auc_drop, seed=settings.random_seed)
    worst = max(groups, key=lambda g: g.drop_lower_bound, default=None)
    worse_groups = [g for g in groups if g.worse]
    lead = (f"{best.candidate} validation ROC-AUC {comparison.challenger_auc:.4f} vs champion v{champion_version} "
            f"{comparison.champion_auc:.4f} on the same {comparison.rows} validation rows: delta "
            f"{comparison.delta:+.4f}, {comparison.confidence:.2%} lower bound {comparison.lower_bound:+.4f} "
            f"(paired bootstrap over {comparison.patients} patients, {comparison.samples} samples, best of "
            f"{comparison.candidates} candidates), min delta {settings.promotion_min_delta:g}")
    findings = []
    if calibration.worse:
        findings.append(f"its calibration is worse: slope {calibration.challenger_slope:.3f} vs the champion's "
                        f"{calibration.champion_slope:.3f} (|slope - 1| worse by at least "
                        f"{calibration.worsening_lower_bound:.3f}, limit {calibration.max_worsening:g})")
    if worse_groups:
        findings.append("it is worse for " + "; ".join(
            f"{g.name} ({g.rows} rows): ROC-AUC {g.challenger_auc:.4f} vs {g.champion_auc:.4f}, at least "
            f"{g.drop_lower_bound:.4f} lower (limit {g.max_drop:g})" for g in worse_groups))
    if not comparison.promoted:
        kind, promoted = NOT_BETTER, False
    elif calibration.worse:
        kind, promoted = WORSE_CALIBRATION, False
    elif worse_groups:
        kind, promoted = WORSE_SUBGROUP, False
    else:
        kind, promoted = BETTER, True
    reason = ("promoted: " if promoted else "not promoted: ") + lead
    if findings:
        reason += "; " + "; ".join(findings)
    elif promoted:
        reason += (f"; calibration slope {calibration.challenger_slope:.3f} (champion "
                   f"{calibration.champion_slope:.3f}) and {len(groups)} subgroups of the model card within limits")
    figures = {
        **comparison.tags(),
        "gate.calibration_slope": f"{calibration.challenger_slope:.6f}",
        "gate.champion_calibration_slope": f"{calibration.champion_slope:.6f}",
        "gate.calibration_worsening_lower_bound": f"{calibration.worsening_lower_bound:.6f}",
        "gate.max_calibration_worsening": f"{calibration.max_worsening:g}",
        "gate.subgroups_checked": str(len(groups)),
        "gate.max_subgroup_auc_drop": f"{settings.promotion_max_subgroup_auc_drop:g}",
    }
    if worst is not None:
        figures.update({"gate.worst_subgroup": worst.name,
                        "gate.worst_subgroup_roc_auc": f"{worst.challenger_auc:.6f}",
                        "gate.worst_subgroup_champion_roc_auc": f"{worst.champion_auc:.6f}",
                        "gate.worst_subgroup_drop_lower_bound": f"{worst.drop_lower_bound:.6f}"})
    return Decision(kind=kind, promoted=promoted, reason=reason, champion_version=champion_version, figures=figures)


def train_summary(settings: DataSettings, clean_store: Engine, run_id: str) -> dict[str, Any]:
    """Batches, rows, patients and positive rate of the train rows run ``run_id`` was fitted on."""
    from sqlalchemy import func, select

    client = _client(settings)
    with registry_call(settings, f"reading run {run_id}", "nothing was registered or promoted"):
        params = client.get_run(run_id).data.params
    batches = [b for b in params.get("train_batches", "").split(",") if b]
    table = clean_encounters
    query = (select(func.count(), func.count(func.distinct(table.c.patient_nbr)), func.avg(table.c[TARGET]))
             .where(table.c.split == "train", table.c.batch_id.in_(batches)))
    with clean_store.connect() as conn:
        rows, patients, rate = conn.execute(query).one()
    return {"batches": batches, "rows": int(rows), "patients": int(patients), "positive_rate": float(rate or 0.0)}


def ensure_card(settings: DataSettings, clean_store: Engine, best: CandidateResult, model: Any,
                validation: pd.DataFrame) -> tuple[ModelCard, str]:
    """The model card on ``best``'s run and its digest: the one stored there by an earlier attempt, or built
    now (validation and test rows) and stored."""
    client = _client(settings)
    failed = "nothing was registered or promoted; a retry builds the model card again"
    with registry_call(settings, f"looking for the model card of run {best.run_id}", failed):
        stored = read_card(client, best.run_id)
    if stored is not None:
        return stored
    card = build_card(candidate=best.candidate, run_id=best.run_id, pipeline=model, threshold=best.threshold,
                      train=train_summary(settings, clean_store, best.run_id), validation=validation,
                      test=read_split(clean_store, "test"), min_group_rows=settings.model_card_min_group_rows,
                      samples=settings.model_card_bootstrap_samples, seed=settings.random_seed)
    with registry_call(settings, f"storing the model card on run {best.run_id}", failed):
        digest = log_card(client, best.run_id, card, settings.model_name)
    return card, digest


def decide(settings: DataSettings, clean_store: Engine, best: CandidateResult, champion,
           candidates: int = 1) -> tuple[Decision, str, str]:
    """(the decision for ``best`` against ``champion``, the checksum of ``best``'s model artifact, the checksum of
    its model card).

    Writes nothing to the registry; stores the candidate's model card on its run (once). ``ArtifactRefused`` if
    the candidate's own artifact fails the contract (it must never be registered); ``RegistryError`` if MLflow
    fails."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="readmit-gate-") as tmp:
        with registry_call(settings, f"downloading the model of {best.candidate} (run {best.run_id})",
                           "nothing was registered or promoted"):
            folder = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=best.model_uri, dst_path=str(Path(tmp) / "candidate"),
                tracking_uri=settings.mlflow_tracking_uri))
        verify_format_and_types(folder)
        digest = artifact_digest(folder)
        candidate_model = mlflow.sklearn.load_model(str(folder))
    validation = read_split(clean_store, "validation")
    card, card_digest = ensure_card(settings, clean_store, best, candidate_model, validation)
    if champion is None:
        return Decision(kind=FIRST_MODEL, promoted=True, champion_version=None,
                        reason=f"first model: validation ROC-AUC {best.metrics['roc_auc']:.4f}"), digest, card_digest
    champion_version = str(champion.version)
    champion_model, refusal = _load_champion(settings, champion)
    if refusal is not None:
        return _unloadable(best, champion_version, refusal), digest, card_digest
    return (_compare(settings, best, champion_version, champion_model, candidate_model, validation, card,
                     candidates), digest, card_digest)


def versions_of_run(settings: DataSettings, run_id: str) -> list:
    """The versions of ``MODEL_NAME`` registered from run ``run_id``, oldest first."""
    name = settings.model_name
    if "'" in name or "'" in run_id:
        raise ValueError("model name and run id must not contain quotes")
    client = _client(settings)
    with registry_call(settings, f"looking for versions of {name} from run {run_id}",
                       "nothing was registered or promoted"):
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda v: int(v.version))


def _drop_duplicates(settings: DataSettings, versions: list) -> None:
    """Versions beyond the first from the same run: a create call MLflow's client retried after the server
    had already created the version. Deleted, unless an alias points at them (then left, with a warning)."""
    client = _client(settings)
    for duplicate in versions[1:]:
        if duplicate.aliases:
            log.warning("v%s duplicates v%s (same run) but holds %s: left alone", duplicate.version,
                        versions[0].version, duplicate.aliases)
            continue
        log.warning("deleting v%s: a duplicate of v%s (same run %s)", duplicate.version, versions[0].version,
                    duplicate.run_id)
        with registry_call(settings, f"deleting duplicate v{duplicate.version}", "the duplicate stays"):
            client.delete_model_version(settings.model_name, duplicate.version)


def register_and_promote(settings: DataSettings, clean_store: Engine, best: CandidateResult,
                         candidates: int = 1) -> Promotion:
    """Register ``best`` (the best of ``candidates`` trained in this run) with its decision, then move the
    alias; a retry completes what an earlier attempt registered. See the module's doc."""
    import mlflow

    existing = versions_of_run(settings, best.run_id)
    champion = current_champion(settings)
    if existing:
        _drop_duplicates(settings, existing)
        return _complete_existing(settings, clean_store, best, existing[0], champion, candidates)

    decision, digest, card_digest = decide(settings, clean_store, best, champion, candidates)
    tags = {**best.lineage, **decision.tags(), DIGEST_TAG: digest, CARD_DIGEST_TAG: card_digest,
            "candidate": best.candidate, "val_roc_auc": f"{best.metrics['roc_auc']:.6f}"}
    with registry_call(settings, f"registering {best.candidate} (run {best.run_id}) as a version of "
                                 f"{settings.model_name}",
                       "no alias moved; a retry of the task reuses a version this run may have created"):
        version = str(mlflow.register_model(best.model_uri, settings.model_name, tags=tags).version)
    return _move_alias(settings, best, version, decision, reused=False)


def _complete_existing(settings: DataSettings, clean_store: Engine, best: CandidateResult, registered,
                       champion, candidates: int) -> Promotion:
    version = str(registered.version)
    champion_version = None if champion is None else str(champion.version)
    decision = Decision.from_tags(dict(registered.tags))
    stale = decision is not None and champion_version not in (decision.champion_version, version)
    if decision is None or stale:
        log.warning("v%s (run %s) has %s: deciding again against champion %s", version, best.run_id,
                    "a decision made against another champion" if stale else "no decision",
                    champion_version or "(none)")
        decision, digest, card_digest = decide(settings, clean_store, best, champion, candidates)
        client = _client(settings)
        with registry_call(settings, f"recording the decision on {settings.model_name} v{version}",
                           "no alias moved; a retry of the task completes the version"):
            for key, value in {**decision.tags(), DIGEST_TAG: digest, CARD_DIGEST_TAG: card_digest}.items():
                client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("v%s was registered by an earlier attempt of run %s: completing it (%s)", version, best.run_id,
             decision.kind)
    return _move_alias(settings, best, version, decision, reused=True)


def _move_alias(settings: DataSettings, best: CandidateResult, version: str, decision: Decision,
                reused: bool) -> Promotion:
    from mlflow.entities import RunTag

    client = _client(settings)
    alias = settings.model_alias if decision.promoted else settings.challenger_alias
    pending = (f"v{version} is registered with its decision ({decision.kind}) but the alias did not move; "
               "a retry of the task completes it")
    with registry_call(settings, f"moving {settings.model_name}@{alias} to v{version}", pending):
        client.set_registered_model_alias(settings.model_name, alias, version)
    with registry_call(settings, f"recording the decision on run {best.run_id}",
                       f"{settings.model_name}@{alias} is v{version}; the run lacks the decision's tags "
                       "until a retry"):
        client.log_batch(best.run_id, tags=[RunTag(k, v) for k, v in decision.tags().items()])
    champion_auc = decision.figures.get("gate.champion_roc_auc")
    return Promotion(
        model_name=settings.model_name,
        version=version,
        candidate=best.candidate,
        run_id=best.run_id,
        promoted=decision.promoted,
        alias=alias,
        reason=decision.reason,
        candidate_roc_auc=best.metrics["roc_auc"],
        champion_roc_auc=None if champion_auc is None else float(champion_auc),
        previous_champion=decision.champion_version,
        decision=decision.kind,
        figures=decision.figures,
        reused=reused,
    )


def record_champion_test_metrics(settings: DataSettings, clean_store: Engine) -> dict[str, float] | None:
    """Test-set metrics of the current champion, computed and recorded once (None if already there or refused).
    ``test_rows`` is written last: a champion without it (an attempt that failed half-way) is done again."""
    client = _client(settings)
    champion = current_champion(settings)
    if champion is None or TEST_DONE_TAG in champion.tags:
        return None
    test = read_split(clean_store, "test")
    if test.empty:
        return None
    try:
        with registry_call(settings, f"downloading champion v{champion.version}", "no test metrics recorded"):
            model = load_verified(settings, str(champion.version))
    except ArtifactRefused as refused:
        log.warning("champion v%s is refused (%s), no test metrics: %s", champion.version, refused.code,
                    refused.details)
        return None
    with registry_call(settings, f"recording the test metrics of champion v{champion.version}",
                       "a retry of the task records them"):
        threshold = client.get_run(champion.run_id).data.metrics.get("threshold", 0.5)
        metrics = evaluate(test[TARGET].to_numpy(), model.predict_proba(test)[:, 1], threshold)
        for key, value in metrics.items():
            client.set_model_version_tag(settings.model_name, champion.version, f"{TEST_TAG_PREFIX}{key}",
                                         f"{value:.6f}")
            client.log_metric(champion.run_id, f"{TEST_TAG_PREFIX}{key}", value)
        client.set_model_version_tag(settings.model_name, champion.version, TEST_DONE_TAG, str(len(test)))
    return metrics
