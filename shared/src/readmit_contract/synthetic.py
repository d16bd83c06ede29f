"""A seeded synthetic generator with the exact schema of ``diabetic_data.csv``.

Frames look like the source file read as text: the 50 columns in order, every
value a string, ``?`` for missing. Marginals follow the real data (age brackets,
``?`` rates, code shapes such as ``250.83``, ``V57``, ``E888``); patients come back
(about 0.7 patients per encounter); about 11 % of in-scope encounters are
readmitted within 30 days, driven by a learnable signal (prior inpatient and
emergency visits, discharge to care facilities, diabetes as primary diagnosis,
medication changes, length of stay, age) plus a hidden patient frailty.

``drift`` (0: the real marginals) shifts the population the way a hospital's intake changes: an older
age mix, more admissions through the emergency room, more prior inpatient and emergency visits. The
outcome keeps the same mechanism, so a model trained on undrifted data meets new patients, not new
rules (monitoring's drift tests and ``make simulate`` use it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .columns import AGE_BRACKETS, COLUMN_NAMES, MEDICATIONS, MISSING, WEIGHT_BRACKETS
from .icd9 import DIAGNOSIS_GROUPS
from .target import EXCLUDED_DISCHARGE_DISPOSITIONS

# value -> weight, from the real file's counts (rounded)
MARGINALS: dict[str, dict[str, float]] = {
    "race": {"Caucasian": 76099, "AfricanAmerican": 19210, MISSING: 2273, "Hispanic": 2037, "Other": 1506,
             "Asian": 641},
    "gender": {"Female": 54708, "Male": 47055, "Unknown/Invalid": 3},
    "age": dict(zip(AGE_BRACKETS, (161, 691, 1657, 3775, 9685, 17256, 22483, 26068, 17197, 2793), strict=True)),
    "weight": {MISSING: 98569, **dict(zip(WEIGHT_BRACKETS, (48, 97, 897, 1336, 625, 145, 35, 11, 3), strict=True))},
    "admission_type_id": {"1": 53990, "3": 18869, "2": 18480, "6": 5291, "5": 4785, "8": 320, "7": 21, "4": 10},
    "discharge_disposition_id": {
        "1": 60234, "3": 13954, "6": 12902, "18": 3691, "2": 2128, "22": 1993, "11": 1642, "5": 1184, "25": 989,
        "4": 815, "7": 623, "23": 412, "13": 399, "14": 372, "28": 139, "8": 108, "15": 63, "24": 48, "9": 21,
        "17": 14, "16": 11, "19": 8, "10": 6, "27": 5, "12": 3, "20": 2,
    },
    "admission_source_id": {
        "7": 57494, "1": 29565, "17": 6781, "4": 3187, "6": 2264, "2": 1104, "5": 855, "3": 187, "20": 161,
        "9": 125, "8": 16, "22": 12, "10": 8, "14": 2, "11": 2, "25": 2, "13": 1,
    },
    "time_in_hospital": dict(zip(map(str, range(1, 15)), (14208, 17224, 17756, 13924, 9966, 7539, 5859, 4391,
                                                           3002, 2342, 1855, 1448, 1210, 1042), strict=True)),
    "payer_code": {
        MISSING: 40256, "MC": 32439, "HM": 6274, "SP": 5007, "BC": 4655, "MD": 3532, "CP": 2533, "UN": 2448,
        "CM": 1937, "OG": 1033, "PO": 592, "DM": 549, "CH": 146, "WC": 135, "OT": 95, "MP": 79, "SI": 55, "FR": 1,
    },
    "medical_specialty": {
        MISSING: 49949, "InternalMedicine": 14635, "Emergency/Trauma": 7565, "Family/GeneralPractice": 7440,
        "Cardiology": 5352, "Surgery-General": 3099, "Nephrology": 1613, "Orthopedics": 1400,
        "Orthopedics-Reconstructive": 1233, "Radiologist": 1140, "Pulmonology": 871, "Psychiatry": 854,
        "Urology": 685, "ObstetricsandGynecology": 671, "Surgery-Cardiovascular/Thoracic": 652,
        "Gastroenterology": 564, "Surgery-Vascular": 533, "Surgery-Neuro": 468, "PhysicalMedicineandRehabilitation": 391,
        "Oncology": 348, "Pediatrics": 254, "Hematology/Oncology": 207, "Neurology": 203,
        "Pediatrics-Endocrinology": 159, "Otolaryngology": 125, "Endocrinology": 120, "Surgery-Thoracic": 109,
        "Psychology": 101, "Podiatry": 100, "Hospitalist": 57, "Gynecology": 58, "Osteopath": 39, "Hematology": 82,
        "InfectiousDiseases": 37, "Ophthalmology": 14, "Rheumatology": 17, "SurgicalSpecialty": 33,
        "Proctology": 1, "Dermatology": 1, "Speech": 1,
    },
    "num_procedures": {"0": 46652, "1": 20742, "2": 12717, "3": 9443, "6": 4954, "4": 4180, "5": 3078},
    "number_diagnoses": {"9": 49474, "5": 11393, "8": 10616, "7": 10393, "6": 10161, "4": 5537, "3": 2835,
                         "2": 1023, "1": 219, "16": 45, "10": 17, "13": 16, "11": 11, "15": 10, "12": 9, "14": 7},
    "max_glu_serum": {"None": 96420, "Norm": 2597, ">200": 1485, ">300": 1264},
    "A1Cresult": {"None": 84748, ">8": 8216, "Norm": 4990, ">7": 3812},
}

# share of encounters on each drug (Steady, Up, Down) out of 101,766
MEDICATION_USE: dict[str, tuple[int, int, int]] = {
    "metformin": (18346, 1067, 575), "repaglinide": (1384, 110, 45), "nateglinide": (668, 24, 11),
    "chlorpropamide": (79, 6, 1), "glimepiride": (4670, 327, 194), "acetohexamide": (1, 0, 0),
    "glipizide": (11356, 770, 560), "glyburide": (9274, 812, 564), "tolbutamide": (23, 0, 0),
    "pioglitazone": (6976, 234, 118), "rosiglitazone": (6100, 178, 87), "acarbose": (295, 10, 3),
    "miglitol": (31, 2, 5), "troglitazone": (3, 0, 0), "tolazamide": (38, 1, 0), "examide": (0, 0, 0),
    "citoglipton": (0, 0, 0), "insulin": (30849, 11316, 12218), "glyburide-metformin": (692, 8, 6),
    "glipizide-metformin": (13, 0, 0), "glimepiride-pioglitazone": (1, 0, 0), "metformin-rosiglitazone": (2, 0, 0),
    "metformin-pioglitazone": (1, 0, 0),
}
_SOURCE_ROWS = 101766

# ICD-9 codes per clinical group, as the source writes them
DIAGNOSIS_CODES: dict[str, tuple[str, ...]] = {
    "circulatory": ("428", "414", "410", "427", "401", "403", "411", "435", "434", "402", "440", "785", "424",
                    "443", "459"),
    "respiratory": ("486", "491", "496", "493", "518", "511", "786", "466", "492", "507"),
    "digestive": ("577", "562", "578", "530", "560", "574", "787", "535", "569", "558"),
    "diabetes": ("250", "250.01", "250.02", "250.6", "250.8", "250.83", "250.13", "250.4", "250.82", "250.11",
                 "250.7", "250.92", "250.03", "250.41", "250.81", "250.1"),
    "injury": ("996", "998", "820", "999", "812", "997", "824", "996.81", "808", "959"),
    "musculoskeletal": ("715", "722", "730", "724", "733", "714", "718", "728"),
    "genitourinary": ("599", "584", "590", "585", "788", "618", "592", "593"),
    "neoplasms": ("162", "153", "174", "185", "197", "198", "189", "157", "188", "203"),
    "other": ("276", "780", "682", "38", "8", "789", "V57", "V45", "E888", "E885", "E849", "V58", "V43", "707",
              "263", "303", "305", "292", "296", "295", "V63", "V54", "E878", "E932", "V45.01", "135"),
}
DIAGNOSIS_GROUP_WEIGHTS: dict[str, tuple[float, float, float]] = {  # diag_1, diag_2, diag_3
    "circulatory": (30.0, 31.0, 30.0), "respiratory": (14.0, 10.5, 7.0), "digestive": (9.3, 4.0, 3.8),
    "diabetes": (8.6, 12.7, 17.0), "injury": (6.9, 2.4, 1.9), "musculoskeletal": (4.9, 1.7, 1.9),
    "genitourinary": (5.0, 8.2, 6.6), "neoplasms": (3.4, 2.5, 1.8), "other": (17.9, 27.0, 30.0),
}
DIAGNOSIS_MISSING_RATE = (0.0002, 0.0035, 0.014)
_CARE_FACILITY_DISCHARGES = {2, 3, 4, 5, 22, 23, 24, 28}


def _pick(rng: np.random.Generator, weights: dict[str, float], n: int) -> np.ndarray:
    values = np.array(list(weights), dtype=object)
    p = np.array(list(weights.values()), dtype=float)
    return rng.choice(values, size=n, p=p / p.sum())


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct increasing integers in [low, high) (random gaps)."""
    gap = max(1, (high - low) // max(n, 1))
    ids = low + np.cumsum(rng.integers(1, gap + 1, size=n))
    return np.minimum(ids, high - 1 - (n - 1 - np.arange(n)))


def _intercept(z: np.ndarray, rate: float) -> float:
    """Intercept b such that mean(sigmoid(z + b)) == rate (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(z + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def drifted_marginals(drift: float) -> dict[str, dict[str, float]]:
    """``MARGINALS`` shifted by ``drift`` (0: unchanged): older patients, more emergency-room admissions."""
    if drift == 0:
        return MARGINALS
    out = dict(MARGINALS)
    out["age"] = {k: w * float(np.exp(drift * 0.5 * (i - 6))) for i, (k, w) in enumerate(MARGINALS["age"].items())}
    source = dict(MARGINALS["admission_source_id"])
    source["7"] *= 1 + 2 * drift
    source["1"] *= max(0.05, 1 - 0.5 * drift)
    out["admission_source_id"] = source
    return out


def generate(n: int, seed: int = 0, positive_rate: float = 0.11, drift: float = 0.0,
             drift_from: float = 0.0) -> pd.DataFrame:
    """``n`` synthetic encounters as text, exactly the columns of ``diabetic_data.csv``; ``drift`` >= 0 shifts
    the population (see the module's doc) of the rows from ``drift_from`` (a share of the file, in file order,
    which is time order) on: ``drift_from=0.6`` keeps the first 60 % as they were and shifts the later ones."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if drift < 0 or not 0.0 <= drift_from < 1.0:
        raise ValueError("drift must be 0 or more, drift_from in [0, 1)")
    if drift and drift_from:
        # same seed: the same patients and encounter ids row for row (drawn before any shifted marginal)
        cut = int(n * drift_from)
        earlier = generate(n, seed, positive_rate).iloc[:cut]
        later = generate(n, seed, positive_rate, drift).iloc[cut:]
        return pd.concat([earlier, later], ignore_index=True)
    rng = np.random.default_rng(seed)
    marginals = drifted_marginals(drift)

    # patients: each one at least once, the rest of the encounters to frail patients more often
    n_patients = max(1, int(round(n * 0.70)))
    frailty = rng.gamma(shape=0.6, scale=1 / 0.6, size=n_patients)
    repeats = rng.choice(n_patients, size=n - n_patients, p=frailty / frailty.sum())
    patient = rng.permutation(np.concatenate([np.arange(n_patients), repeats]))
    patient_ids = rng.permutation(_unique_ids(rng, n_patients, 135, 189_502_619))
    f = frailty[patient]

    col: dict[str, np.ndarray] = {}
    col["encounter_id"] = _unique_ids(rng, n, 12_522, 443_867_222).astype(str)
    col["patient_nbr"] = patient_ids[patient].astype(str)
    for name in ("race", "gender"):  # fixed per patient
        col[name] = _pick(rng, MARGINALS[name], n_patients)[patient]
    age_index = np.searchsorted(AGE_BRACKETS, _pick(rng, marginals["age"], n_patients))[patient]
    age_index = np.minimum(age_index + (rng.random(n) < 0.1), len(AGE_BRACKETS) - 1)
    col["age"] = np.asarray(AGE_BRACKETS, dtype=object)[age_index]
    for name in ("weight", "admission_type_id", "discharge_disposition_id", "admission_source_id",
                 "payer_code", "medical_specialty", "num_procedures", "number_diagnoses", "max_glu_serum",
                 "A1Cresult", "time_in_hospital"):
        col[name] = _pick(rng, marginals[name], n)
    stay = col["time_in_hospital"].astype(int)
    labs = np.where(rng.random(n) < 0.03, 1, np.clip(rng.normal(43, 19.7, n).round(), 1, 132)).astype(int)
    col["num_lab_procedures"] = labs.astype(str)
    col["num_medications"] = np.clip(rng.normal(8 + 2.0 * stay, 7), 1, 81).round().astype(int).astype(str)
    outpatient = rng.poisson(0.37 * f)
    emergency = rng.poisson(0.20 * f * (1 + drift))
    inpatient = rng.poisson(0.64 * f * (1 + drift))
    col["number_outpatient"] = outpatient.astype(str)
    col["number_emergency"] = emergency.astype(str)
    col["number_inpatient"] = inpatient.astype(str)

    groups = np.array(list(DIAGNOSIS_GROUP_WEIGHTS), dtype=object)
    primary_group = None
    for slot in range(3):
        p = np.array([w[slot] for w in DIAGNOSIS_GROUP_WEIGHTS.values()])
        group = rng.choice(groups, size=n, p=p / p.sum())
        codes = np.empty(n, dtype=object)
        for g, options in DIAGNOSIS_CODES.items():
            where = group == g
            codes[where] = rng.choice(np.array(options, dtype=object), size=int(where.sum()))
        codes[rng.random(n) < DIAGNOSIS_MISSING_RATE[slot]] = MISSING
        col[f"diag_{slot + 1}"] = codes
        if slot == 0:
            primary_group = group

    changed = np.zeros(n, dtype=int)
    on_drug = np.zeros(n, dtype=bool)
    for med in MEDICATIONS:
        steady, up, down = MEDICATION_USE[med]
        p = np.array([_SOURCE_ROWS - steady - up - down, steady, up, down], dtype=float)
        status = rng.choice(np.array(["No", "Steady", "Up", "Down"], dtype=object), size=n, p=p / p.sum())
        col[med] = status
        changed += (status == "Up") | (status == "Down")
        on_drug |= status != "No"
    col["change"] = np.where(changed > 0, "Ch", "No").astype(object)
    col["diabetesMed"] = np.where(on_drug, "Yes", "No").astype(object)

    # outcome: a learnable logistic signal plus unobserved frailty
    discharge = col["discharge_disposition_id"].astype(int)
    z = (
        0.30 * np.minimum(inpatient, 6)
        + 0.15 * np.minimum(emergency, 4)
        + 0.05 * np.minimum(outpatient, 4)
        + 0.45 * np.isin(discharge, list(_CARE_FACILITY_DISCHARGES))
        + 0.30 * (primary_group == "diabetes")
        + 0.20 * (changed > 0)
        + 0.04 * stay
        + 0.06 * age_index
        + 0.25 * (col["A1Cresult"] == ">8")
        + 0.35 * np.log(f + 0.1)
        + rng.normal(0, 0.3, n)
    )
    scorable = ~np.isin(discharge, list(EXCLUDED_DISCHARGE_DISPOSITIONS))
    b = _intercept(z[scorable], positive_rate) if scorable.any() else 0.0
    positive = (rng.random(n) < 1 / (1 + np.exp(-(z + b)))) & scorable
    later = rng.random(n) < 0.393 * (1 + 0.3 * np.tanh(f - 1))
    col["readmitted"] = np.where(positive, "<30", np.where(later & scorable, ">30", "NO")).astype(object)

    frame = pd.DataFrame({name: col[name] for name in COLUMN_NAMES})
    return frame.astype("str")


def write_csv(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` synthetic encounters to ``path`` as the source file is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(n, seed).to_csv(path, index=False)
    return path


__all__ = ["generate", "write_csv", "MARGINALS", "DIAGNOSIS_CODES", "DIAGNOSIS_GROUPS"]
