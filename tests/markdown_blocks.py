"""The code in README.md and docs/*.md as tests read it: fenced blocks with their markers, commands, shown output.

A block's marker is an HTML comment on the line before its fence, invisible when the page is
rendered: ``<!-- file: PATH -->`` (the block is that file), ``<!-- worker -->`` (the command that
starts the worker, which stays running), ``<!-- commands -->`` (commands run one after another),
``<!-- output -->`` (lines the commands before it print), ``<!-- log -->`` (lines the worker logs)
and ``<!-- not run: REASON -->`` (a fragment the examples test does not run).

Shown output is compared by shape (:func:`shape`): run, event, proposal and schedule ids, numbers
and spacing vary; ``...`` stands for anything, and a line that is only ``...`` leaves lines out.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>[\w ]+?)\s*(?::\s*(?P<arg>.*?))?\s*-->\s*$")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_ID = re.compile(r"(?P<prefix>\b(?:run|ev|prop|sch)_)[0-9a-f]+\b")
_SHAPE_PIECES = re.compile(r"(\.\.\.|\s+|\b(?:run|ev|prop|sch)_[0-9a-f]+\b|\d+)")
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_PYTHON = re.compile(r"(?:^|/)python(?:3(?:\.\d+)?)?$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int
    """The line of its opening fence, from 1."""
    lang: str
    text: str
    kind: str | None = None
    """Its marker's kind (``file``, ``worker``, ``commands``, ``output``, ``log``, ``not run``), if any."""
    arg: str | None = None
    """What follows the marker's colon (the file's path, the reason), if anything."""

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of the markdown file ``path`` (or of ``text``), in order, with its marker."""
    lines = (path.read_text() if text is None else text).splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = len(opening["indent"])
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before)
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=opening["lang"],
                text=body,
                kind=marker["kind"] if marker else None,
                arg=marker["arg"] if marker else None,
            )
        )
        i = end + 1
    return found


def section_blocks(path: Path, heading: str) -> list[Block]:
    """The fenced blocks of the ``## heading`` section of the markdown file ``path``."""
    lines = path.read_text().splitlines()
    start = lines.index(f"## {heading}") + 1
    end = next((i + 1 for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines) + 1)
    return [b for b in blocks(path) if start < b.line < end]


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section of a markdown page, up to the next ``## `` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def command_lines(block: Block) -> list[str]:
    """The commands of a shell block: one a line (``\\`` continues one), without ``$ `` prompts and comments."""
    commands: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line and not line.startswith("#"):
            commands.append(line)  # a trailing comment stays: the shell ignores it
    return commands


def shape(shown: str) -> re.Pattern[str]:
    """A pattern for a line of shown output: ids, numbers and spacing vary, ``...`` is anything."""
    parts: list[str] = []
    for piece in _SHAPE_PIECES.split(shown.strip()):
        if not piece:
            continue
        if piece == "...":
            parts.append(".*?")
        elif piece.isspace():
            parts.append(r"\s+")
        elif (found := _ID.fullmatch(piece)) is not None:
            parts.append(re.escape(found["prefix"]) + "[0-9a-f]+")
        elif piece.isdigit():
            parts.append(r"\d+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def shown_lines(block: Block) -> list[str]:
    """The lines an output block shows, without those that only say lines were left out."""
    return [line for line in block.text.splitlines() if line.strip() and line.strip() != "..."]


def missing_lines(block: Block, actual: str) -> list[str]:
    """The lines of ``block`` that no line of ``actual`` has the shape of."""
    have = [line.strip() for line in actual.splitlines()]
    return [line for line in shown_lines(block) if not any(shape(line).fullmatch(h) for h in have)]


@dataclass(frozen=True, slots=True)
class Command:
    """A command line shown in the docs that runs the scheduler's command line or the worker."""

    where: str
    text: str
    program: str
    """``agent.scheduler`` or ``worker.py``."""
    argv: list[str]
    """The arguments after the module or the script."""


def program_call(text: str) -> tuple[str, list[str]] | None:
    """``(program, argv)`` when ``text`` runs ``python -m agent.scheduler`` or ``python worker.py``, else None.

    Variable assignments before the interpreter (``PYTHONPATH=... python ...``) are passed over; the
    arguments end at a shell operator.
    """
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    if not words or not _PYTHON.search(words[0]):
        return None
    if words[1:3] == ["-m", "agent.scheduler"]:
        program, rest = "agent.scheduler", words[3:]
    elif len(words) > 1 and (words[1] == "worker.py" or words[1].endswith("/worker.py")):
        program, rest = "worker.py", words[2:]
    else:
        return None
    argv: list[str] = []
    for word in rest:
        if word in {"&&", "||", "|", ";", ">", ">>", "2>&1", "&"}:
            break
        argv.append(word)
    return program, argv


def commands(path: Path) -> list[Command]:
    """Every scheduler or worker command ``path`` shows, in shell blocks, output transcripts and inline code."""
    found: list[Command] = []
    for block in blocks(path):
        if block.lang in {"python", "json", "mermaid"}:
            continue
        for line in command_lines(block):
            call = program_call(line)
            if call is not None:
                found.append(Command(block.where, line, *call))
    prose = re.sub(r"(?ms)^ *```.*?^ *```\s*$", "", path.read_text())
    for span in _INLINE_CODE.findall(prose):
        call = program_call(span)
        if call is not None:
            found.append(Command(f"{path.name} (inline)", span, *call))
    return found
