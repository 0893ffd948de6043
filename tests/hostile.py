"""Seeded hostile landing files: good click lines broken the ways real landing zones break
them, with an oracle that counts, from the bytes alone, the records a file holds.

The oracle knows only the line rules (a line ends at LF, CR or CRLF; an empty line holds
nothing; a line of bytes up to 0x20 is blank), never how Spark parses, so it stays an
independent check of ingest's accounting.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from clickdata import CATEGORICALS, NUMERICS, line

LINE_END = re.compile(rb"\r\n|\r|\n")
HUGE = 1_100_000  # characters: past clicks.yaml's max_record_chars (1 MiB)


@dataclass(frozen=True)
class HostileFile:
    name: str
    content: bytes

    def lines(self) -> list[bytes]:
        parts = LINE_END.split(self.content)
        return [p for p in parts if p]

    @property
    def records(self) -> int:
        """Non-empty lines: each is one record, landed or quarantined."""
        return len(self.lines())

    @property
    def blank(self) -> int:
        return sum(1 for p in self.lines() if max(p) <= 0x20)


def good_lines(rng: random.Random, prefix: str, count: int) -> list[str]:
    return [
        line(f"{prefix}-{i}", user_id=str(rng.randint(1, 30)),
             event_time=f"2026-01-0{rng.randint(1, 7)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
             label=str(rng.randint(0, 1)), numeric=str(rng.randint(0, 500) / 10))
        for i in range(count)
    ]


def _mutate(rng: random.Random, text: str, earlier: list[str]) -> bytes:
    """One line, possibly broken in one of many ways (as bytes: some are not UTF-8)."""
    fields = text.split("\t")
    if len(fields) != 4 + NUMERICS + CATEGORICALS:  # a re-delivered line that is broken already
        return text.encode()
    kind = rng.choice([
        "keep", "keep", "keep", "keep", "semicolons", "latin1", "drop_field", "extra_field",
        "blank", "tabs_only", "nul_only", "nul_inside", "control", "truncate", "quote",
        "bad_number", "bad_time", "bad_label", "duplicate", "empty_key", "cut_utf8",
    ])
    if kind == "semicolons":
        return ";".join(fields).encode()
    if kind == "latin1":
        fields[-1] = "caf\xe9"
        return "\t".join(fields).encode("latin-1")
    if kind == "drop_field":
        del fields[rng.randrange(len(fields))]
    elif kind == "extra_field":
        fields.insert(rng.randrange(len(fields)), "surplus")
    elif kind == "blank":
        return b" " * rng.randint(1, 5)
    elif kind == "tabs_only":
        return b"\t" * rng.randint(1, 3)
    elif kind == "nul_only":
        return b"\x00"
    elif kind == "nul_inside":
        at = rng.randrange(1, len(text))
        return (text[:at] + "\x00" + text[at:]).encode()
    elif kind == "control":
        fields[rng.randrange(len(fields))] += rng.choice(["\x01", "\x07", "\x1b", "\x7f"])
    elif kind == "truncate":
        return text[: rng.randrange(1, len(text))].encode()
    elif kind == "quote":
        fields[rng.randrange(len(fields))] = '"' + fields[rng.randrange(len(fields))]
    elif kind == "bad_number":
        fields[4 + rng.randrange(13)] = rng.choice(["n/a", "1,5", "1e999x", "--1"])
    elif kind == "bad_time":
        fields[2] = rng.choice(["yesterday", "2026-13-01 00:00:00", "2026-01-01T25:00:00"])
    elif kind == "bad_label":
        fields[3] = rng.choice(["2", "-1", "yes"])
    elif kind == "duplicate" and earlier:
        return rng.choice(earlier).encode()
    elif kind == "empty_key":
        fields[0] = ""
    elif kind == "cut_utf8":
        fields[-1] = "caf\xe9"
        return "\t".join(fields).encode()[:-1]  # half of a two-byte character
    return "\t".join(fields).encode()


def hostile_file(rng: random.Random, name: str, redelivered: list[str], huge: bool = False) -> HostileFile:
    """A file of 5 to 40 lines, most good, some broken; random line ends and final newline."""
    lines: list[bytes] = []
    written: list[str] = []
    for text in good_lines(rng, name, rng.randint(5, 40)):
        if redelivered and rng.random() < 0.05:
            text = rng.choice(redelivered)
        lines.append(_mutate(rng, text, written))
        written.append(text)
        if rng.random() < 0.05:
            lines.append(b"")  # an empty line
    if huge:
        lines.insert(rng.randrange(len(lines)), line(f"{name}-huge", category="x" * HUGE).encode())
    ends = [rng.choice([b"\n", b"\n", b"\r\n", b"\r"]) for _ in lines]
    content = b"".join(part + end for part, end in zip(lines, ends))
    if rng.random() < 0.3:
        content = content.rstrip(b"\r\n")  # no final newline
    return HostileFile(name, content)
