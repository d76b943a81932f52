"""DICOM series read with pydicom, de-identified as each file is read, stacked into volumes.

De-identification follows the DICOM PS3.15 Basic Application Level Confidentiality Profile (PS3.15 Annex E,
Table E.1-1): the attributes it lists as identifying are removed, together with every person name, date,
time, age, application entity title and free-text element (the value representations under which that
table's remaining entries fall), private tags, curves and overlays. Instance UIDs are replaced by keyed hashes
(the profile's "U" action), so series and studies stay linkable without the original UIDs, which often embed
dates, device serials or site numbers. SeriesDescription is kept (it tells the series of a study apart), as
the profile's Clean Descriptors option allows once it has been checked. Pixel data are not cleaned:
burned-in text is out of scope.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.tag import BaseTag

from medfm.data.intensity import ct_window, ct_window_option, percentile_scale, require_finite
from medfm.data.salt import standalone_salt
from medfm.data.sources.base import SourceAdapter, SourceInfo, register_source
from medfm.errors import ConfigError, DataError

DEIDENTIFICATION_METHOD = "medfm: PS3.15 E.1-1 Basic Profile, hashed UIDs"  # an LO value: at most 64 chars

# Attributes of PS3.15 Table E.1-1 that identify patients, staff, institutions, requests or devices.
# Entries whose value representation is removed wholesale (below) are listed too, for the reader.
_IDENTIFYING_KEYWORDS_TEXT = """
    PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence TypeOfPatientID
    OtherPatientIDs OtherPatientIDsSequence OtherPatientNames PatientBirthName PatientBirthDate
    PatientBirthTime PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar
    PatientAlternativeCalendar PatientAge PatientSex PatientSize PatientWeight PatientAddress
    PatientTelephoneNumbers PatientTelecomInformation PatientMotherBirthName MilitaryRank BranchOfService
    MedicalRecordLocator EthnicGroup EthnicGroupCodeSequence Occupation PatientReligiousPreference
    AdditionalPatientHistory PatientComments MedicalAlerts Allergies SmokingStatus PregnancyStatus
    LastMenstrualDate CountryOfResidence RegionOfResidence InsurancePlanIdentification
    PatientInsurancePlanCodeSequence PatientPrimaryLanguageCodeSequence
    PatientPrimaryLanguageModifierCodeSequence ResponsiblePerson ResponsibleOrganization PatientState
    ReferencedPatientSequence ReferencedPatientPhotoSequence ReferencedPatientAliasSequence
    PatientSexNeutered PatientInstitutionResidence SpecialNeeds

    AdmissionID IssuerOfAdmissionID IssuerOfAdmissionIDSequence AdmittingDiagnosesDescription
    AdmittingDiagnosesCodeSequence AdmittingDate AdmittingTime CurrentPatientLocation ServiceEpisodeID
    ServiceEpisodeDescription IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence VisitComments
    DischargeDiagnosisDescription ReasonForVisit ReferencedVisitSequence

    AccessionNumber IssuerOfAccessionNumberSequence StudyID StudyDescription StudyComments ReasonForStudy
    RequestingService RequestingPhysician RequestedProcedureID RequestedProcedureDescription
    RequestedProcedureComments ReasonForTheRequestedProcedure ReasonForTheImagingServiceRequest
    ImagingServiceRequestComments PlacerOrderNumberImagingServiceRequest
    FillerOrderNumberImagingServiceRequest OrderEnteredBy OrderEntererLocation OrderCallbackPhoneNumber
    OrderCallbackTelecomInformation RequestAttributesSequence ReferencedStudySequence
    ReferencedPerformedProcedureStepSequence PerformedProcedureStepID PerformedProcedureStepDescription
    PerformedLocation PerformedStationAETitle PerformedStationName ScheduledProcedureStepID
    ScheduledProcedureStepDescription ScheduledPerformingPhysicianName ScheduledStationName
    ScheduledStationAETitle ProtocolName CommentsOnThePerformedProcedureStep AcquisitionComments
    ImageComments FrameComments IdentifyingComments TextComments TextString DerivationDescription
    ContentSequence AcquisitionContextSequence IconImageSequence OriginalAttributesSequence
    ModifiedAttributesSequence DigitalSignaturesSequence DataSetTrailingPadding StorageMediaFileSetID

    InstitutionName InstitutionAddress InstitutionCodeSequence InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence StationName ReferringPhysicianName ReferringPhysicianAddress
    ReferringPhysicianTelephoneNumbers ReferringPhysicianIdentificationSequence ConsultingPhysicianName
    ConsultingPhysicianIdentificationSequence PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    PerformingPhysicianName PerformingPhysicianIdentificationSequence NameOfPhysiciansReadingStudy
    PhysiciansReadingStudyIdentificationSequence OperatorsName OperatorIdentificationSequence PersonName
    PersonIdentificationCodeSequence PersonAddress PersonTelephoneNumbers PersonTelecomInformation
    VerifyingObserverName VerifyingObserverSequence VerifyingOrganization AuthorObserverSequence
    ParticipantSequence CustodialOrganizationSequence HumanPerformerName HumanPerformerOrganization
    ActualHumanPerformersSequence ContentCreatorName ContentCreatorIdentificationCodeSequence
    NamesOfIntendedRecipientsOfResults IntendedRecipientsOfResultsIdentificationSequence DistributionName
    DistributionAddress

    DeviceSerialNumber DeviceID DetectorID GantryID GeneratorID CassetteID PlateID ModifyingDeviceID
    SourceSerialNumber XRayDetectorID XRaySourceID

    ClinicalTrialSponsorName ClinicalTrialProtocolID ClinicalTrialProtocolName ClinicalTrialSiteID
    ClinicalTrialSiteName ClinicalTrialSubjectID ClinicalTrialSubjectReadingID ClinicalTrialTimePointID
    ClinicalTrialTimePointDescription ClinicalTrialCoordinatingCenterName
    ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolEthicsCommitteeApprovalNumber
    ClinicalTrialSeriesID ClinicalTrialSeriesDescription
"""
IDENTIFYING_KEYWORDS = frozenset(_IDENTIFYING_KEYWORDS_TEXT.split())
IDENTIFYING_TAGS = frozenset(tag_for_keyword(keyword) for keyword in IDENTIFYING_KEYWORDS)

# Person names, dates, times, ages, AE titles (they name stations and sites) and free text.
IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM", "AS", "AE", "LT", "ST", "UT"})

# UIDs defined by the standard itself (SOP classes, transfer syntaxes) identify nothing and stay.
STANDARD_UID_ROOT = "1.2.840.10008."

# Curve (50xx) and overlay (60xx) groups can carry burned-in annotations.
CURVE_OVERLAY_GROUPS = (0x5000, 0x6000)

MODALITY_NAMES = {
    "CT": "ct",
    "MR": "mr",
    "CR": "xray",
    "DX": "xray",
    "RG": "xray",
    "MG": "mammography",
    "PT": "pet",
    "NM": "nm",
    "US": "ultrasound",
    "XA": "angiography",
}

# CT window used when ct_window is "auto", by anatomy (BodyPartExamined, lower case); others get "abdomen".
AUTO_CT_WINDOWS = {"head": "brain", "brain": "brain", "chest": "lung", "lung": "lung", "thorax": "lung"}

# Which plane indexing an axis gives, by the patient axis (x, y, z in LPS) the axis mostly runs along.
PLANE_OF_AXIS = ("sagittal", "coronal", "axial")

# What pydicom raises for a non-DICOM, truncated or undecodable file; each becomes a "corrupt_dicom" skip.
DICOM_ERRORS = (
    InvalidDicomError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    struct.error,
)


def keyed_digest(value: str, salt: str, purpose: bytes, size: int = 16) -> bytes:
    """blake2b of ``value`` keyed by ``salt``; ``purpose`` separates pseudonyms from hashed UIDs."""
    key = hashlib.blake2b(salt.encode(), digest_size=32).digest()  # any salt length fits the 64-byte key
    return hashlib.blake2b(value.encode(), key=key, person=purpose, digest_size=size).digest()


def subject_pseudonym(ds: Dataset, salt: str) -> str | None:
    """``subj-<hex>``: a keyed hash of PatientID (of the study, then the series, when it has none).

    Call it before :func:`deidentify`, which deletes PatientID and replaces the UIDs. ``None`` when the
    dataset has none of the three.
    """
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        basis = str(ds.get(keyword) or "").strip()
        if basis:
            return "subj-" + keyed_digest(basis, salt, b"medfm-subject", size=8).hex()
    return None


def hashed_uid(uid: str, salt: str) -> str:
    """A valid UID (``2.25.<integer>``, PS3.5 B.2) derived from ``uid`` by a keyed hash: same in, same out."""
    return "2.25." + str(int.from_bytes(keyed_digest(uid.strip(), salt, b"medfm-uid"), "big"))


def skipped_file_name(rel: str, salt: str) -> str:
    """How logs and skip records name a file: ``file-<keyed hash of its relative path>`` plus ``.dcm`` or
    ``.dicom``, because folder and file names are not de-identified (TCIA folders start with the PatientID).
    Whoever holds the salt can recompute it for a path; no other part of the name is kept."""
    suffix = Path(rel).suffix.lower()
    kept_suffix = suffix if suffix in (".dcm", ".dicom") else ""
    return "file-" + keyed_digest(rel, salt, b"medfm-path", size=8).hex() + kept_suffix


def error_detail(err: Exception, path: Path) -> str:
    """The error as a skip detail, without the file's path (an OSError's message embeds it)."""
    message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{type(err).__name__}: {message.replace(str(path), 'the file')}"


def deidentify(ds: Dataset, *, salt: str) -> Dataset:
    """Remove patient, staff, institution and device identifiers from ``ds`` in place and return it.

    Deletes the attributes of :data:`IDENTIFYING_KEYWORDS`, every element whose VR is in
    :data:`IDENTIFYING_VRS`, private tags, curve/overlay groups and public tags unknown to pydicom's
    dictionary, in nested sequences and in the file meta too; replaces UIDs not defined by the standard
    with :func:`hashed_uid`; records PatientIdentityRemoved and DeidentificationMethod. Elements are
    deleted rather than emptied, so a file written from the result may lack type 2 attributes.
    """
    _clean(ds, salt)
    if getattr(ds, "file_meta", None) is not None:
        _clean(ds.file_meta, salt)
    # An earlier de-identification's codes (e.g. "retain patient characteristics") no longer describe it.
    ds.pop("DeidentificationMethodCodeSequence", None)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    return ds


def _clean(dataset: Dataset, salt: str) -> None:
    # Decide from the tag and the dictionary VR, so only UIDs and sequences are ever decoded: decoding
    # every element (as Dataset.walk does) costs more than reading the file.
    for tag in list(dataset.keys()):
        vr = None if tag.is_private else _dictionary_vr(tag)
        if (
            vr is None
            or vr in IDENTIFYING_VRS
            or tag in IDENTIFYING_TAGS
            or (tag.group & 0xFF00) in CURVE_OVERLAY_GROUPS
        ):
            del dataset[tag]
        elif vr == "UI":
            element = dataset[tag]
            if element.value:
                values = element.value if isinstance(element.value, MultiValue) else [element.value]
                hashed = [
                    v if str(v).startswith(STANDARD_UID_ROOT) else hashed_uid(str(v), salt) for v in values
                ]
                element.value = hashed if len(hashed) > 1 else hashed[0]
        elif vr == "SQ":
            for item in dataset[tag].value:
                _clean(item, salt)


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def read_deidentified(path: Path, *, salt: str, pixels: bool) -> tuple[Dataset, str | None]:
    """Read a file and de-identify it at once; returns the dataset and the subject pseudonym.

    Every read of the adapter goes through here, so no identifier outlives the read. Raises one of
    :data:`DICOM_ERRORS` for a file that is not usable DICOM.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    subject_id = subject_pseudonym(ds, salt)
    return deidentify(ds, salt=salt), subject_id


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` numbers from a multi-valued DS element, or ``None`` when absent or malformed."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


@dataclass(frozen=True)
class SliceHeader:
    """What the adapter needs from one file's header, read once before any pixel data."""

    path: Path
    rel: str
    subject_id: str
    series_uid: str
    study_uid: str
    modality: str
    body_part: str
    series_description: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    photometric: str
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None

    def geometry(self) -> tuple[int, int, tuple[float, ...] | None]:
        """Rows, columns and orientation (to 0.01) that every slice of a stack shares."""
        orientation = None if self.orientation is None else tuple(round(v, 2) for v in self.orientation)
        return self.rows, self.columns, orientation

    @classmethod
    def from_dataset(cls, ds: Dataset, path: Path, rel: str, subject_id: str) -> SliceHeader:
        instance = ds.get("InstanceNumber")
        return cls(
            path=path,
            rel=rel,
            subject_id=subject_id,
            series_uid=str(ds.get("SeriesInstanceUID") or ""),
            study_uid=str(ds.get("StudyInstanceUID") or ""),
            modality=str(ds.get("Modality") or "").upper(),
            body_part=str(ds.get("BodyPartExamined") or "").strip().lower(),
            series_description=str(ds.get("SeriesDescription") or "").strip(),
            image_type=tuple(str(v) for v in (ds.get("ImageType") or [])),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            photometric=str(ds.get("PhotometricInterpretation") or "MONOCHROME2"),
            pixel_spacing=_floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [], 2),
            slice_thickness=_number(ds.get("SliceThickness")),
            spacing_between_slices=_number(ds.get("SpacingBetweenSlices")),
            position=_floats(ds.get("ImagePositionPatient") or [], 3),
            orientation=_floats(ds.get("ImageOrientationPatient") or [], 6),
            instance_number=int(instance) if instance not in (None, "") else None,
        )


def unusable_reason(ds: Dataset) -> tuple[str, str] | None:
    """A skip reason and detail for a readable file that is not a single-frame greyscale image."""
    if "Rows" not in ds or "Columns" not in ds or not ds.get("SeriesInstanceUID"):
        return "not_an_image", "no Rows/Columns or SeriesInstanceUID"
    if int(ds.get("NumberOfFrames") or 1) > 1:
        return "unsupported_multiframe", f"{ds.NumberOfFrames} frames in one file"
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        return "unsupported_color", f"SamplesPerPixel {ds.SamplesPerPixel}"
    return None


def short_id(prefix: str, hashed: str) -> str:
    """A short readable id of an already hashed UID."""
    return f"{prefix}-{hashlib.blake2b(hashed.encode(), digest_size=8).hexdigest()}"


def plane_names(orientation: tuple[float, ...] | None) -> list[str]:
    """Plane names of the [slice, row, column] axes from ImageOrientationPatient.

    An axial series gives ``["axial", "coronal", "sagittal"]``, a sagittal one
    ``["sagittal", "axial", "coronal"]``; ``["slice", "row", "column"]`` when unknown or too oblique to say.
    """
    if orientation is None:
        return ["slice", "row", "column"]
    along_row, along_column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(along_row, along_column)
    names = [PLANE_OF_AXIS[int(np.argmax(np.abs(v)))] for v in (normal, along_column, along_row)]
    return names if len(set(names)) == 3 else ["slice", "row", "column"]


def order_slices(headers: list[SliceHeader]) -> tuple[list[SliceHeader], str, list[float] | None]:
    """Sort slices along the slice normal, else by InstanceNumber, else by file name.

    Returns the sorted headers, how they were sorted, and each slice's position along the normal (mm)
    when positions are known.
    """
    first = headers[0].orientation
    if first is not None and all(h.position is not None for h in headers):
        normal = np.cross(np.array(first[:3]), np.array(first[3:]))
        along = {h.rel: float(np.dot(h.position, normal)) for h in headers}
        ordered = sorted(headers, key=lambda h: (along[h.rel], h.rel))
        return ordered, "position", [along[h.rel] for h in ordered]
    if all(h.instance_number is not None for h in headers):
        return sorted(headers, key=lambda h: (h.instance_number, h.rel)), "instance_number", None
    return sorted(headers, key=lambda h: h.rel), "file_name", None


def series_folder(headers: list[SliceHeader]) -> str:
    """The folder holding a series' files, relative to the root."""
    return os.path.commonpath([Path(h.rel).parent.as_posix() or "." for h in headers])


def slice_spacing(positions: list[float] | None, header: SliceHeader) -> float:
    """Distance between slices: median step of the positions, else SpacingBetweenSlices, SliceThickness, 1."""
    if positions is not None and len(positions) > 1:
        step = float(np.median(np.diff(positions)))
        if step > 1e-3:
            return round(step, 4)
    return header.spacing_between_slices or header.slice_thickness or 1.0


@register_source("dicom")
class DicomSource(SourceAdapter):
    """DICOM series under a folder tree, one sample per series, de-identified as each file is read.

    Reads files named ``*.dcm`` / ``*.dicom`` and any other file with the DICOM preamble (``DICM``); hidden
    files are ignored. Files are grouped by SeriesInstanceUID, sorted along the slice normal
    (ImagePositionPatient, else InstanceNumber) and stacked in acquisition order without resampling::

        {"image": float32 [1, D, H, W] (D = slices, H = rows, W = columns), in [0, 1] unless keep_hu,
         "meta": {..., "modality": "ct" | "mr" | "xray" | ..., "anatomy": BodyPartExamined or the option,
                  "spacing": [slice spacing, row spacing, column spacing] in mm,
                  "axis_names": planes from ImageOrientationPatient (an axial series gives
                                ["axial", "coronal", "sagittal"]) or ["slice", "row", "column"],
                  "n_slices", "rows", "columns", "pixel_spacing", "slice_thickness", "image_type",
                  "series_description", "slice_order": "position" | "instance_number" | "file_name",
                  "study_id": hashed study, "intensity": how values were mapped,
                  "deidentified": True, "deidentification": the method, "path": series folder}}

    ``subject_id`` is a keyed pseudonym of PatientID (see :func:`subject_pseudonym`) and ``sample_id`` a
    hash of the series UID; no original UID, name, date or ID reaches ``meta``.

    Intensity: CT is converted to Hounsfield units (RescaleSlope/RescaleIntercept through pydicom's modality
    LUT) and windowed; every other modality (MR, X-ray, PET, ...) is scaled so the ``mr_percentiles`` of the
    whole series map to 0/1, and MONOCHROME1 images are inverted so that bright means dense or intense.

    Options:
        ct_window: CT window preset name, ``[centre, width]`` in HU, or ``"auto"``: brain for head/brain,
            lung for chest, abdomen otherwise (by BodyPartExamined or ``anatomy``).
        keep_hu: return CT as raw Hounsfield units (float32, not in [0, 1]) instead of windowing.
        mr_percentiles: low and high percentile for non-CT modalities.
        anatomy: anatomy when a series has no BodyPartExamined.
        min_slices: a series with fewer usable slices is skipped ("too_few_slices").
        subject_salt: secret key of the pseudonyms and hashed UIDs (see :mod:`medfm.data.salt`). A corpus
            build passes its own (``$MEDFM_SUBJECT_SALT`` or one kept in the corpus folder) and refuses
            it in a config; on its own the adapter takes ``$MEDFM_SUBJECT_SALT``, else a random salt of
            this process, so its pseudonyms match only within the process.
        record_paths: put the series folder in ``meta["path"]`` and name skipped files and series by their
            paths. Off by default because folder names are not de-identified (TCIA downloads, for one,
            start with the PatientID); turn it on only for folders known to carry no identifiers.

    Skip reasons: ``corrupt_dicom`` (not DICOM, truncated, or pixel data that cannot be decoded; the rest
    of the series still loads), ``not_an_image`` (no Rows/Columns or no series UID, e.g. DICOMDIR),
    ``unsupported_multiframe``, ``unsupported_color``, ``inconsistent_slice`` (Rows/Columns or
    orientation differ from the series majority), ``too_few_slices``, ``non_finite_volume``. Unless
    ``record_paths``, a skipped file is named by :func:`skipped_file_name` and a skipped series by its
    ``sample_id``, not by their paths.
    """

    info = SourceInfo(
        kind="volume",
        modality="other",
        anatomy="unknown",
        license="unspecified",
        description="DICOM series, de-identified at ingest (PS3.15 Basic Profile), stacked into volumes",
    )

    def __init__(
        self,
        root: str | Path,
        *,
        ct_window: str | Sequence[float] = "auto",
        keep_hu: bool = False,
        mr_percentiles: Sequence[float] = (0.5, 99.5),
        anatomy: str | None = None,
        min_slices: int = 1,
        subject_salt: str | None = None,
        record_paths: bool = False,
        source: str | None = None,
        license: str | None = None,
    ):
        super().__init__(root, source=source, license=license)
        self.ct_window = "auto" if ct_window == "auto" else ct_window_option(ct_window, self.name)
        self.keep_hu = keep_hu
        low, high = (float(p) for p in mr_percentiles)
        self.mr_percentiles = (low, high)
        self.anatomy = anatomy
        if min_slices < 1:
            raise ConfigError(f"{self.name}: min_slices must be at least 1, got {min_slices}")
        self.min_slices = min_slices
        if subject_salt == "":
            raise ConfigError(f"{self.name}: subject_salt must not be empty")
        self.subject_salt = subject_salt or standalone_salt()
        self.record_paths = record_paths

    def candidate_files(self) -> list[Path]:
        """Files to read: ``*.dcm`` / ``*.dicom`` (which must be DICOM) and others with the DICOM preamble."""
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith("."):
                    continue
                if path.suffix.lower() in (".dcm", ".dicom") or is_dicom(path):
                    files.append(path)
        if not files:
            raise DataError(f"{self.name}: no DICOM files under {self.root}")
        return files

    def read_headers(self) -> dict[str, list[SliceHeader]]:
        """Pass 1: de-identified headers of every usable file, grouped by (hashed) series UID."""
        series: dict[str, list[SliceHeader]] = defaultdict(list)
        for path in self.candidate_files():
            rel = path.relative_to(self.root).as_posix()
            try:
                ds, subject_id = read_deidentified(path, salt=self.subject_salt, pixels=False)
                problem = unusable_reason(ds)
                header = None if problem else SliceHeader.from_dataset(ds, path, rel, str(subject_id))
            except DICOM_ERRORS as err:
                self.skip_file(rel, "corrupt_dicom", error_detail(err, path))
                continue
            if header is None:
                self.skip_file(rel, *problem)
                continue
            series[header.series_uid].append(header)
        return series

    def skip_file(self, rel: str, reason: str, detail: str = "") -> None:
        """Record an unusable file, by a non-identifying name (:func:`skipped_file_name`) unless paths may
        be recorded."""
        name = rel if self.record_paths else skipped_file_name(rel, self.subject_salt)
        self.skips.add(name, reason, detail)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        series = self.read_headers()
        for headers in sorted(series.values(), key=lambda hs: min(h.rel for h in hs)):
            sample = self.load_series(headers)
            if sample is not None:
                yield sample

    def load_series(self, headers: list[SliceHeader]) -> dict[str, Any] | None:
        """Pass 2 for one series: read the pixels slice by slice and stack them; ``None`` if unusable."""
        series_id = short_id("series", headers[0].series_uid)
        series_name = series_folder(headers) if self.record_paths else series_id  # in skips
        # A slice of another size or orientation (a localizer kept in the series) cannot be stacked.
        majority = Counter(h.geometry() for h in headers).most_common(1)[0][0]
        shape = majority[:2]
        usable = []
        for header in headers:
            if header.geometry() != majority:
                detail = (
                    f"{header.rows}x{header.columns}, orientation {header.orientation}; series: {majority}"
                )
                self.skip_file(header.rel, "inconsistent_slice", detail)
            else:
                usable.append(header)
        ordered, slice_order, positions = order_slices(usable)

        slices, kept_positions = [], []
        for index, header in enumerate(ordered):
            try:
                ds, _ = read_deidentified(header.path, salt=self.subject_salt, pixels=True)
                pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            except DICOM_ERRORS as err:
                self.skip_file(header.rel, "corrupt_dicom", error_detail(err, header.path))
                continue
            if pixels.shape != shape:
                detail = f"pixel data {pixels.shape}, header {shape}"
                self.skip_file(header.rel, "inconsistent_slice", detail)
                continue
            slices.append(pixels)
            if positions is not None:
                kept_positions.append(positions[index])

        if len(slices) < self.min_slices:
            detail = f"{len(slices)} usable of {len(headers)} files; min_slices is {self.min_slices}"
            self.skips.add(series_name, "too_few_slices", detail)
            return None
        volume = np.stack(slices)[None]
        problem = require_finite(volume)
        if problem:
            self.skips.add(series_name, "non_finite_volume", problem)
            return None

        first = ordered[0]
        modality = MODALITY_NAMES.get(first.modality, first.modality.lower() or self.info.modality)
        anatomy = first.body_part or self.anatomy or self.info.anatomy
        image, intensity = self.scale(volume, first, modality, anatomy)
        pixel_spacing = list(first.pixel_spacing or (1.0, 1.0))
        extra = {"path": series_name} if self.record_paths else {}
        meta = self.meta(
            sample_id=series_id,
            subject_id=first.subject_id,
            modality=modality,
            anatomy=anatomy,
            spacing=[slice_spacing(kept_positions or None, first), *pixel_spacing],
            axis_names=plane_names(first.orientation),
            n_slices=len(slices),
            rows=shape[0],
            columns=shape[1],
            pixel_spacing=pixel_spacing,
            slice_thickness=first.slice_thickness,
            image_type=list(first.image_type),
            series_description=first.series_description,
            slice_order=slice_order,
            study_id=short_id("study", first.study_uid) if first.study_uid else None,
            intensity=intensity,
            deidentified=True,
            deidentification=DEIDENTIFICATION_METHOD,
            **extra,
        )
        return {"image": image, "meta": meta}

    def scale(
        self, volume: np.ndarray, header: SliceHeader, modality: str, anatomy: str
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Map the stacked series to the output intensities; returns the image and a description."""
        if modality == "ct":
            if self.keep_hu:
                return volume, {"method": "hounsfield"}
            preset = AUTO_CT_WINDOWS.get(anatomy, "abdomen") if self.ct_window == "auto" else self.ct_window
            centre, width = ct_window_option(preset, self.name)
            windowed = ct_window(volume, (centre, width))
            return windowed, {"method": "ct_window", "centre": centre, "width": width}
        # percentile_scale can promote to float64 (its percentiles are float64 scalars); samples are float32.
        image = percentile_scale(volume, *self.mr_percentiles)
        if header.photometric == "MONOCHROME1":
            image = 1.0 - image
        return image, {"method": "percentile", "percentiles": list(self.mr_percentiles)}
