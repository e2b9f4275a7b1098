"""When each session was acquired, and so in which order a subject's sessions come.

Change over time needs an order, and session labels do not always give it (``ses-pre`` /
``ses-post``, ``ses-10`` after ``ses-9``, relabelled follow-ups). The acquisition time is
taken from the first of these that states it:

1. the manifest entry's ``session_date`` (the user said so explicitly);
2. ``scans.tsv`` of the session folder: the ``acq_time`` of the row naming the DWI file;
3. ``sessions.tsv`` of the subject folder: the ``acq_time`` of the session's row;
4. the image's JSON sidecar: ``AcquisitionDateTime``, or ``AcquisitionDate`` + ``AcquisitionTime``;
5. DICOM input: the first file's header (``AcquisitionDateTime``, or a date among Acquisition/
   Series/StudyDate with the matching time).

A date without a time (a date-only ``session_date`` or ``acq_time``) takes the sidecar's
``AcquisitionTime`` when there is one, else counts as midnight. A time without any date (a
sidecar that only has ``AcquisitionTime``, as dcm2niix writes for anonymised data) is not used:
two sessions on different days would be ordered by the clock. Unreadable values are logged and
skipped (the aggregation must not stop over a date); the manifest's ``session_date`` is checked
when the manifest is loaded instead.

Ordering (:func:`session_order_key`): by acquisition time when every session of the subject has
one, ties and the rest by the label's natural order (``ses-2`` before ``ses-10``; series entities
after the session label).
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionTime:
    when: datetime | None      # naive, UTC when the source gave an offset
    source: str | None         # which rule gave it (see module doc), None when unknown


def parse_datetime(text) -> datetime | None:
    """ISO 8601 date or date-time (``T`` or space, fractions, ``Z``/offset) → naive datetime;
    None for empty/``n/a``; ValueError for anything else."""
    if text is None:
        return None
    text = str(text).strip()
    if not text or text.lower() in ("n/a", "na", "nan"):
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = datetime.combine(date.fromisoformat(text), time())  # raises ValueError itself
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _is_date_only(text) -> bool:
    return bool(re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", str(text or "")))


def _parse_time_of_day(text) -> time | None:
    text = str(text or "").strip()
    m = re.fullmatch(r"(\d{2}):?(\d{2}):?(\d{2})(?:\.(\d{1,6})\d*)?", text)
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        return time(int(hh), int(mm), int(ss), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def _checked(text, where: str) -> datetime | None:
    try:
        return parse_datetime(text)
    except ValueError:
        log.warning("%s: %r is not an ISO 8601 date/time; ignored for session order", where, text)
        return None


def _series_stem(image: Path) -> str:
    name = image.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _session_folder(spec) -> Path | None:
    """The BIDS session (or subject) folder holding the image, when the image lies in one."""
    if spec.input_type != "nifti":
        return None
    folder = spec.input_path.parent.parent
    expected = spec.session_id or spec.subject_id
    return folder if folder.name == expected else None


def scans_tsv(spec) -> Path | None:
    folder = _session_folder(spec)
    if folder is None:
        return None
    parts = [spec.subject_id] + ([spec.session_id] if spec.session_id else [])
    return folder / f"{'_'.join(parts)}_scans.tsv"


def sessions_tsv(spec) -> Path | None:
    folder = _session_folder(spec)
    if folder is None or spec.session_id is None:
        return None
    return folder.parent / f"{spec.subject_id}_sessions.tsv"


def sidecar_json(spec) -> Path | None:
    if spec.input_type != "nifti":
        return None
    return spec.input_path.with_name(_series_stem(spec.input_path) + ".json")


def time_sources(spec) -> list[Path]:
    """Existing files the acquisition time may come from: what the aggregation must be rerun
    after (the DICOM folder is already an input of the session)."""
    return [p for p in (scans_tsv(spec), sessions_tsv(spec), sidecar_json(spec)) if p is not None and p.is_file()]


def _tsv_value(path: Path | None, column: str, key: str, match) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if match(row.get(key) or "") and row.get(column):
                    return row[column]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: cannot read (%s); ignored for session order", path, exc)
    return None


def _sidecar(spec) -> dict:
    path = sidecar_json(spec)
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: not readable JSON (%s); ignored for session order", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _dicom_time(spec) -> datetime | None:
    folder = spec.input_path
    if spec.input_type != "dicom" or not folder.is_dir():
        return None
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: try the next one
            continue
        stamp = str(ds.get("AcquisitionDateTime", "") or "")
        if len(stamp) >= 8:
            t = _parse_time_of_day(stamp[8:14]) if len(stamp) >= 14 else time()
            try:
                return datetime.combine(date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8])), t or time())
            except ValueError:
                return None
        for d_key, t_key in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                             ("StudyDate", "StudyTime")):
            d = str(ds.get(d_key, "") or "")
            if len(d) == 8 and d.isdigit():
                try:
                    return datetime.combine(date(int(d[:4]), int(d[4:6]), int(d[6:8])),
                                            _parse_time_of_day(ds.get(t_key, "")) or time())
                except ValueError:
                    return None
        return None
    return None


def acquisition_time(spec) -> SessionTime:
    """The session's acquisition time and the rule that gave it (see the module doc)."""
    sidecar = _sidecar(spec)
    clock = _parse_time_of_day(sidecar.get("AcquisitionTime"))

    def with_clock(text, value: datetime, source: str) -> SessionTime:
        if _is_date_only(text) and clock is not None:
            return SessionTime(datetime.combine(value.date(), clock), source + " + sidecar AcquisitionTime")
        return SessionTime(value, source)

    date_text = getattr(spec, "session_date", None)
    value = _checked(date_text, f"{spec.origin or spec.key}: session_date")
    if value is not None:
        return with_clock(date_text, value, "manifest session_date")
    scans = scans_tsv(spec)
    text = _tsv_value(scans, "acq_time", "filename", lambda f: Path(f).name == spec.input_path.name)
    value = _checked(text, f"{scans}: acq_time")
    if value is not None:
        return with_clock(text, value, "scans.tsv acq_time")
    sessions = sessions_tsv(spec)
    text = _tsv_value(sessions, "acq_time", "session_id",
                      lambda s: s == spec.session_id or f"ses-{s}" == spec.session_id)
    value = _checked(text, f"{sessions}: acq_time")
    if value is not None:
        return with_clock(text, value, "sessions.tsv acq_time")
    where = str(sidecar_json(spec))
    value = _checked(sidecar.get("AcquisitionDateTime"), f"{where}: AcquisitionDateTime")
    if value is not None:
        return SessionTime(value, "sidecar AcquisitionDateTime")
    day = _checked(sidecar.get("AcquisitionDate"), f"{where}: AcquisitionDate")
    if day is not None:
        return SessionTime(datetime.combine(day.date(), clock or time()), "sidecar AcquisitionDate + AcquisitionTime")
    value = _dicom_time(spec)
    if value is not None:
        return SessionTime(value, "DICOM header")
    return SessionTime(None, None)


def natural_key(text: str) -> tuple:
    """``ses-2`` before ``ses-10``: digit runs compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", text or "") if p)


def session_order_key(label: str, when: datetime | None, use_time: bool) -> tuple:
    """Sort key of a session within its subject (``use_time``: every session has a time)."""
    return ((0, when) if use_time and when is not None else (1, datetime.min)), natural_key(label)
