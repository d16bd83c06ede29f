"""The 50 columns of ``diabetic_data.csv``: the single place they are declared.

Every other part of the platform (validator, feature transform, pydantic model,
synthetic generator, stores, API, UI) derives what it needs from ``COLUMNS``, the
stores' column widths included (``Column.max_length``, ``RAW_MAX_LENGTH``).

Kinds
-----
``id``           integer identifier, not a feature (encounter_id, patient_nbr)
``integer``      count or duration with an inclusive range
``code``         integer code from the hospital system with a closed set of ids
                 (admission_type_id, ...); descriptions from ``IDs_mapping.csv``
``category``     text with a closed set of allowed values
``open_category`` text with the values seen in the source, but new values are
                 legal: they are accepted and mapped to "other" by the transform
``icd9``         an ICD-9 code (``250.83``, ``V57``, ``E888``), checked by shape
``outcome``      the original three-valued ``readmitted`` (kept in raw data)

Words for people
----------------
``label`` is the column's name on the clinician's form (``Lab tests`` for ``num_lab_procedures``), ``description``
says what it holds (the form's help, the model card's and the explanations' words) and ``hint`` adds how to fill
it in where the values are not self-explanatory. ``typical`` is the most common value of the column in the real
``diabetic_data.csv`` (``None``: most often missing), the form's starting patient; it is not a default: an
encounter sent to the API without a field still gets ``default`` (or is refused when there is none).
``tests/contract/test_labels.py`` checks the declared values against the real file (marker ``real_data``).

When a value is known
---------------------
``known`` says when, in a hospital stay, a column's value exists: at ``admission`` (who the patient is,
how they came in, their prior-year visits) or only at ``discharge`` (length of stay, procedures, coded
diagnoses, test results, medication decisions, discharge disposition). The model scores an encounter at
discharge; the model card lists the inputs known only then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

MISSING = "?"
"""The missing-value marker of the source file."""

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""Sentinel: the column has no default in an encounter."""

Kind = Literal["id", "integer", "code", "category", "open_category", "icd9", "outcome"]
Known = Literal["admission", "discharge"]

TEXT_MAX_LENGTH = 64
"""Longest text value (characters) the contract accepts in a text column, and the width the stores give it
(the source's longest is 36). Validation rejects a longer value with its reason, on every backend."""

RAW_MAX_LENGTH = 255
"""Longest field (characters) a raw load stores as received; a line with a longer field is rejected whole
(reason and line number) instead of being stored. Wider than ``TEXT_MAX_LENGTH`` so that validation, not the
database, decides about values a little too long."""

ICD9_PATTERN = re.compile(r"^(?:\d{1,3}(?:\.\d{1,2})?|V\d{2}(?:\.\d{1,2})?|E\d{3}(?:\.\d{1,2})?)$")
"""Shape of an ICD-9 code as the source writes it (no leading zeros: ``8``, ``38``, ``250.83``)."""

OPEN_CATEGORY_PATTERN = re.compile(rf"^[A-Za-z][A-Za-z0-9&/\-]{{0,{TEXT_MAX_LENGTH - 1}}}$")
"""Shape of a legal value of an open category (medical specialty, payer code)."""

MEDICATION_STATUSES: tuple[str, ...] = ("No", "Steady", "Up", "Down")
AGE_BRACKETS: tuple[str, ...] = tuple(f"[{a}-{a + 10})" for a in range(0, 100, 10))
WEIGHT_BRACKETS: tuple[str, ...] = tuple(f"[{a}-{a + 25})" for a in range(0, 200, 25)) + (">200",)


@dataclass(frozen=True)
class Column:
    """One column of the source file."""

    name: str
    kind: Kind
    description: str
    allowed: tuple[str, ...] | tuple[int, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False
    """Whether the ``?`` marker (missing) is a legal value."""
    labels: dict[int, str] = field(default_factory=dict)
    """Human descriptions of ``code`` values (from IDs_mapping.csv)."""
    default: object = REQUIRED
    """Value an encounter sent to the API may omit (``REQUIRED``: it may not)."""
    max_length: int | None = None
    """Longest value in characters (text kinds; ``TEXT_MAX_LENGTH`` unless given): validation rejects a
    longer one and the stores declare the column this wide. None for integer kinds."""
    known: Known = "admission"
    """When in the stay the value exists (see the module's doc)."""
    label: str = ""
    """The column's name for people (the form's field label), in clinical words."""
    hint: str = ""
    """How to fill it in, when its values need saying (added to the form's help after ``description``)."""
    typical: str | int | None = None
    """Most common value in the real file (None: most often missing): the form's starting value, never a default."""

    def __post_init__(self) -> None:
        if not self.is_integer and self.max_length is None:
            object.__setattr__(self, "max_length", TEXT_MAX_LENGTH)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def python_name(self) -> str:
        """Identifier usable as a Python attribute (``glyburide-metformin`` -> ``glyburide_metformin``)."""
        return self.name.replace("-", "_")

    @property
    def is_integer(self) -> bool:
        return self.kind in ("id", "integer", "code")

    @property
    def is_feature(self) -> bool:
        return self.kind not in ("id", "outcome")


_ADMISSION_TYPE = {
    1: "Emergency", 2: "Urgent", 3: "Elective", 4: "Newborn", 5: "Not Available",
    6: "NULL", 7: "Trauma Center", 8: "Not Mapped",
}
_DISCHARGE_DISPOSITION = {
    1: "Discharged to home",
    2: "Discharged/transferred to another short term hospital",
    3: "Discharged/transferred to SNF",
    4: "Discharged/transferred to ICF",
    5: "Discharged/transferred to another type of inpatient care institution",
    6: "Discharged/transferred to home with home health service",
    7: "Left AMA",
    8: "Discharged/transferred to home under care of Home IV provider",
    9: "Admitted as an inpatient to this hospital",
    10: "Neonate discharged to another hospital for neonatal aftercare",
    11: "Expired",
    12: "Still patient or expected to return for outpatient services",
    13: "Hospice / home",
    14: "Hospice / medical facility",
    15: "Discharged/transferred within this institution to Medicare approved swing bed",
    16: "Discharged/transferred/referred another institution for outpatient services",
    17: "Discharged/transferred/referred to this institution for outpatient services",
    18: "NULL",
    19: "Expired at home. Medicaid only, hospice.",
    20: "Expired in a medical facility. Medicaid only, hospice.",
    21: "Expired, place unknown. Medicaid only, hospice.",
    22: "Discharged/transferred to another rehab fac including rehab units of a hospital",
    23: "Discharged/transferred to a long term care hospital",
    24: "Discharged/transferred to a nursing facility certified under Medicaid but not under Medicare",
    25: "Not Mapped",
    26: "Unknown/Invalid",
    27: "Discharged/transferred to a federal health care facility",
    28: "Discharged/transferred/referred to a psychiatric hospital or unit",
    29: "Discharged/transferred to a Critical Access Hospital (CAH)",
    30: "Discharged/transferred to another type of health care institution not defined elsewhere",
}
_ADMISSION_SOURCE = {
    1: "Physician Referral", 2: "Clinic Referral", 3: "HMO Referral", 4: "Transfer from a hospital",
    5: "Transfer from a Skilled Nursing Facility (SNF)", 6: "Transfer from another health care facility",
    7: "Emergency Room", 8: "Court/Law Enforcement", 9: "Not Available",
    10: "Transfer from critical access hospital", 11: "Normal Delivery", 12: "Premature Delivery",
    13: "Sick Baby", 14: "Extramural Birth", 15: "Not Available", 17: "NULL",
    18: "Transfer From Another Home Health Agency", 19: "Readmission to Same Home Health Agency",
    20: "Not Mapped", 21: "Unknown/Invalid",
    22: "Transfer from hospital inpatient/same facility resulting in a separate claim",
    23: "Born inside this hospital", 24: "Born outside this hospital",
    25: "Transfer from Ambulatory Surgery Center", 26: "Transfer from Hospice",
}

PAYER_CODES: tuple[str, ...] = (
    "MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "OG", "PO", "DM", "CH", "WC", "OT", "MP", "SI", "FR",
)
MEDICAL_SPECIALTIES: tuple[str, ...] = (
    "AllergyandImmunology", "Anesthesiology", "Anesthesiology-Pediatric", "Cardiology",
    "Cardiology-Pediatric", "DCPTEAM", "Dentistry", "Dermatology", "Emergency/Trauma", "Endocrinology",
    "Endocrinology-Metabolism", "Family/GeneralPractice", "Gastroenterology", "Gynecology", "Hematology",
    "Hematology/Oncology", "Hospitalist", "InfectiousDiseases", "InternalMedicine", "Nephrology",
    "Neurology", "Neurophysiology", "Obsterics&Gynecology-GynecologicOnco", "Obstetrics",
    "ObstetricsandGynecology", "Oncology", "Ophthalmology", "Orthopedics", "Orthopedics-Reconstructive",
    "Osteopath", "Otolaryngology", "OutreachServices", "Pathology", "Pediatrics",
    "Pediatrics-AllergyandImmunology", "Pediatrics-CriticalCare", "Pediatrics-EmergencyMedicine",
    "Pediatrics-Endocrinology", "Pediatrics-Hematology-Oncology", "Pediatrics-InfectiousDiseases",
    "Pediatrics-Neurology", "Pediatrics-Pulmonology", "Perinatology", "PhysicalMedicineandRehabilitation",
    "PhysicianNotFound", "Podiatry", "Proctology", "Psychiatry", "Psychiatry-Addictive",
    "Psychiatry-Child/Adolescent", "Psychology", "Pulmonology", "Radiologist", "Radiology", "Resident",
    "Rheumatology", "Speech", "SportsMedicine", "Surgeon", "Surgery-Cardiovascular",
    "Surgery-Cardiovascular/Thoracic", "Surgery-Colon&Rectal", "Surgery-General", "Surgery-Maxillofacial",
    "Surgery-Neuro", "Surgery-Pediatric", "Surgery-Plastic", "Surgery-PlasticwithinHeadandNeck",
    "Surgery-Thoracic", "Surgery-Vascular", "SurgicalSpecialty", "Urology",
)

MEDICATIONS: tuple[str, ...] = (
    "metformin", "repaglinide", "nateglinide", "chlorpropamide", "glimepiride", "acetohexamide",
    "glipizide", "glyburide", "tolbutamide", "pioglitazone", "rosiglitazone", "acarbose", "miglitol",
    "troglitazone", "tolazamide", "examide", "citoglipton", "insulin", "glyburide-metformin",
    "glipizide-metformin", "glimepiride-pioglitazone", "metformin-rosiglitazone", "metformin-pioglitazone",
)
"""The 23 medication columns: status of each drug at this encounter (No / Steady / Up / Down)."""

READMITTED_VALUES: tuple[str, ...] = ("NO", ">30", "<30")


def _code(name: str, label: str, description: str, labels: dict[int, str], typical: int,
          known: Known = "admission") -> Column:
    return Column(name, "code", description, allowed=tuple(sorted(labels)), labels=labels, known=known, label=label,
                  typical=typical)


def _count(name: str, label: str, description: str, maximum: int, typical: int, minimum: int = 0,
           known: Known = "admission") -> Column:
    return Column(name, "integer", description, minimum=minimum, maximum=maximum, known=known, label=label,
                  typical=typical)


MEDICATION_HINT = ("No: not prescribed; Steady: prescribed, dose unchanged; Up: dose increased during the stay; "
                   "Down: dose decreased")

# typical: the mode of each column in the real diabetic_data.csv (tests/contract/test_labels.py checks them)
COLUMNS: tuple[Column, ...] = (
    Column("encounter_id", "id", "Unique identifier of the encounter", minimum=1, maximum=10**12, default=None,
           label="Encounter ID"),
    Column("patient_nbr", "id", "Identifier of the patient", minimum=1, maximum=10**12, default=None,
           label="Patient number"),
    Column("race", "category", "Race", nullable=True, default=None,
           allowed=("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other"), label="Race", typical="Caucasian"),
    Column("gender", "category", "Gender", allowed=("Female", "Male", "Unknown/Invalid"), label="Gender",
           typical="Female"),
    Column("age", "category", "Age bracket in years", allowed=AGE_BRACKETS, label="Age", typical="[70-80)"),
    Column("weight", "category", "Weight bracket in pounds", nullable=True, default=None, allowed=WEIGHT_BRACKETS,
           label="Weight", hint="Rarely recorded: leave unknown when it was not measured"),
    _code("admission_type_id", "Type of admission", "Type of admission", _ADMISSION_TYPE, typical=1),
    _code("discharge_disposition_id", "Discharged to", "Discharge disposition", _DISCHARGE_DISPOSITION, typical=1,
          known="discharge"),
    _code("admission_source_id", "Admitted from", "Source of admission", _ADMISSION_SOURCE, typical=7),
    _count("time_in_hospital", "Length of stay (days)", "Days between admission and discharge", minimum=1,
           maximum=14, typical=3, known="discharge"),
    Column("payer_code", "open_category", "Payer (insurance) code", nullable=True, default=None,
           allowed=PAYER_CODES, label="Payer",
           hint="The code the hospital system records (the source does not publish what each stands for)"),
    Column("medical_specialty", "open_category", "Specialty of the admitting physician", nullable=True, default=None,
           allowed=MEDICAL_SPECIALTIES, label="Admitting physician's specialty"),
    _count("num_lab_procedures", "Lab tests", "Lab tests performed during the encounter", minimum=0, maximum=200,
           typical=1, known="discharge"),
    _count("num_procedures", "Other procedures", "Procedures (other than lab tests) performed", maximum=10,
           typical=0, known="discharge"),
    _count("num_medications", "Medications given", "Distinct generic drugs administered", maximum=150, typical=13,
           known="discharge"),
    _count("number_outpatient", "Outpatient visits, past year", "Outpatient visits in the year before the encounter",
           maximum=100, typical=0),
    _count("number_emergency", "Emergency visits, past year", "Emergency visits in the year before the encounter",
           maximum=100, typical=0),
    _count("number_inpatient", "Inpatient stays, past year", "Inpatient visits in the year before the encounter",
           maximum=100, typical=0),
    Column("diag_1", "icd9", "Primary diagnosis (ICD-9)", nullable=True, default=None, known="discharge",
           label="Primary diagnosis", typical="428"),
    Column("diag_2", "icd9", "Secondary diagnosis (ICD-9)", nullable=True, default=None, known="discharge",
           label="Secondary diagnosis", typical="276"),
    Column("diag_3", "icd9", "Additional secondary diagnosis (ICD-9)", nullable=True, default=None, known="discharge",
           label="Additional diagnosis", typical="250"),
    _count("number_diagnoses", "Number of diagnoses", "Diagnoses entered into the system", minimum=1, maximum=20,
           typical=9, known="discharge"),
    Column("max_glu_serum", "category", "Glucose serum test result (None: not measured)",
           allowed=("None", "Norm", ">200", ">300"), default="None", known="discharge", label="Serum glucose test",
           hint=">200, >300: above 200 or 300 mg/dL; Norm: normal", typical="None"),
    Column("A1Cresult", "category", "HbA1c test result (None: not measured)",
           allowed=("None", "Norm", ">7", ">8"), default="None", known="discharge", label="HbA1c test",
           hint=">7, >8: above 7 % or 8 %; Norm: below 7 %", typical="None"),
    *(Column(m, "category", f"Status of {m} at this encounter", allowed=MEDICATION_STATUSES, default="No",
             known="discharge", label=m.capitalize(), hint=MEDICATION_HINT, typical="No")
      for m in MEDICATIONS),
    Column("change", "category", "Change in diabetic medications (Ch: changed)", allowed=("No", "Ch"),
           known="discharge", label="Diabetes medication changed", hint="Ch: a dose or a drug changed",
           typical="No"),
    Column("diabetesMed", "category", "Any diabetic medication prescribed", allowed=("No", "Yes"),
           known="discharge", label="Diabetes medication prescribed", typical="Yes"),
    Column("readmitted", "outcome", "Readmission: NO, >30 days, <30 days", allowed=READMITTED_VALUES,
           label="Readmission"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
ID_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.kind == "id")
FEATURE_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_feature)
INTEGER_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_integer)
TEXT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if not c.is_integer)
NULLABLE_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.nullable)
DISCHARGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.is_feature and c.known == "discharge")
"""Inputs known only at discharge (``Column.known``)."""
OUTCOME_COLUMN = "readmitted"

assert len(COLUMNS) == 50, "diabetic_data.csv has 50 columns"


def typical_record() -> dict[str, str | int | None]:
    """The typical encounter's features (``Column.typical``), contract names, None for missing: the form's
    starting patient and the CSV template's row."""
    return {c.name: c.typical for c in COLUMNS if c.is_feature}


def column(name: str) -> Column:
    """The column called ``name`` (KeyError when the contract has none)."""
    return BY_NAME[name]
