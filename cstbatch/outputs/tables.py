"""CSV/TSV writing shared by per-session metrics and group tables (atomic, stable columns)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping

from cstbatch.atomic import write_text


def rows_to_text(rows: Iterable[Mapping], delimiter: str = ",", columns: list[str] | None = None) -> str:
    """Columns in first-seen order (or as given); missing values empty; None written as empty."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter=delimiter, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def write_csv(path: Path, rows: Iterable[Mapping], delimiter: str = ",", columns: list[str] | None = None) -> Path:
    return write_text(path, rows_to_text(rows, delimiter, columns))
