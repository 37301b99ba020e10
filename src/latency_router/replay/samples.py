"""Read a replay samples CSV (`t_s,group,region,path,rtt_ms[,truth_ms]`) as a stream, naming the line and field of any bad row."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

REQUIRED_COLUMNS = ("t_s", "group", "region", "path", "rtt_ms")
TRUTH_COLUMN = "truth_ms"


class SamplesError(ValueError):
    """A samples file that cannot be replayed; the message names the file, the line and the field."""


# one CSV row: its line number, a time, the (group, region, path) it measures, an RTT (None when lost)
# and the truth (None when down or absent); a plain tuple, as 1.26 M named ones cost seconds
SampleRow = tuple[int, float, str, str, str, "float | None", "float | None"]


class SamplesFile:
    """A samples CSV opened for streaming: `has_truth` is known from the header, rows come from iteration."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.rows_read = 0
        self.lost = 0
        try:
            with self.path.open(newline="") as fh:
                header = next(csv.reader(fh), None)
        except OSError as exc:
            raise SamplesError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SamplesError(f"{self.path} line 1: not a CSV header ({exc})") from None
        if header is None:
            raise SamplesError(f"{self.path}: empty file (expected the header {','.join(REQUIRED_COLUMNS)}[,{TRUTH_COLUMN}])")
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise SamplesError(f"{self.path} line 1: header lacks {', '.join(missing)} (got {','.join(names)})")
        self._index = {c: names.index(c) for c in (*REQUIRED_COLUMNS, TRUTH_COLUMN) if c in names}
        self._width = len(names)
        self.has_truth = TRUTH_COLUMN in names

    def _bad(self, line: int, field: str, message: str) -> SamplesError:
        return SamplesError(f"{self.path} line {line}: {field}: {message}")

    def _number(self, line: int, field: str, text: str, positive: bool) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self._bad(line, field, f"expected a number, got {text[:40]!r}") from None
        if not math.isfinite(value):
            raise self._bad(line, field, f"expected a finite number, got {text!r}")
        if positive and value <= 0:
            raise self._bad(line, field, f"must be more than 0 (a lost probe is an empty field), got {text!r}")
        if value < 0:
            raise self._bad(line, field, f"must not be negative, got {text!r}")
        return value

    def __iter__(self) -> Iterator[SampleRow]:
        i_t, i_g, i_r, i_p, i_rtt = (self._index[c] for c in REQUIRED_COLUMNS)
        i_truth = self._index.get(TRUTH_COLUMN)
        width = self._width
        number = self._number
        inf = math.inf
        line = 1
        try:
            with self.path.open(newline="") as fh:
                reader = csv.reader(fh)
                next(reader, None)
                for fields in reader:
                    line = reader.line_num
                    if len(fields) != width:
                        if not fields:
                            continue  # a blank line
                        raise self._bad(line, "row", f"expected {width} fields, got {len(fields)}")
                    text = fields[i_t]
                    try:
                        t_s = float(text)
                    except ValueError:
                        raise self._bad(line, "t_s", f"expected a number of seconds, got {text[:40]!r}") from None
                    if not -inf < t_s < inf:
                        raise self._bad(line, "t_s", f"expected a finite number, got {text!r}")
                    group, region, path = fields[i_g], fields[i_r], fields[i_p]
                    if not group or not region or not path:
                        field = "group" if not group else "region" if not region else "path"
                        raise self._bad(line, field, "must not be empty")
                    # the fast path takes well-formed numbers; anything else goes to number() for its message
                    text = fields[i_rtt]
                    if text:
                        try:
                            rtt_ms: float | None = float(text)
                        except ValueError:
                            rtt_ms = number(line, "rtt_ms", text, True)
                        if not 0 < rtt_ms < inf:  # type: ignore[operator]
                            rtt_ms = number(line, "rtt_ms", text, True)
                    else:
                        rtt_ms = None
                        self.lost += 1
                    truth_ms: float | None = None
                    if i_truth is not None:
                        text = fields[i_truth]
                        if text:
                            try:
                                truth_ms = float(text)
                            except ValueError:
                                truth_ms = number(line, TRUTH_COLUMN, text, False)
                            if not 0 <= truth_ms < inf:  # type: ignore[operator]
                                truth_ms = number(line, TRUTH_COLUMN, text, False)
                    self.rows_read += 1
                    yield (line, t_s, group, region, path, rtt_ms, truth_ms)  # type: ignore[misc]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SamplesError(f"{self.path} line {line + 1}: row: not CSV text ({exc})") from None
