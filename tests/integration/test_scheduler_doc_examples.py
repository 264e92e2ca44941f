"""The examples of README.md and docs/*.md work: every Python block runs, every command line shown parses.

A Python block runs as a script in a subprocess, with a temporary HOME (whose default database
holds one schedule, as after a worker's first start) and its placeholder paths and URLs replaced
by files in a temporary directory; a block that defines ``register(tasks, store)`` is then loaded
as the worker loads a tasks module, twice on one database (a first start and a restart). Blocks
marked ``<!-- not run: REASON -->`` are fragments and are skipped; there are few.

Every ``python -m agent.scheduler ...`` and ``python worker.py ...`` the pages show (in shell
blocks, transcripts and inline code) is given to the real argument parser, with optional parts
(``[...]``) included and placeholder words (NAME, ID, MODULE...) replaced by values of their kind.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import worker
from agent.scheduler import ScheduleDefinition, ScheduleStore
from agent.scheduler.cli import build_parser
from agent.scheduler.proposals import InvalidProposal, ScheduleProposal
from agent.scheduler.schedule_policy import Rule
from tests.markdown_blocks import Block, Command, blocks, commands, section

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Seconds one example may take (a loaded machine: generous; they take about one).
EXAMPLE_SECONDS = 60

#: Placeholders in the Python examples and what replaces them ({tmp} is the example's directory).
PLACEHOLDERS = {
    "sqlite:////abs/path/": "sqlite:///{tmp}/",
    "postgresql://user:password@host:5432/actp": "sqlite:///{tmp}/postgresql.db",
}

#: Placeholder words in the command lines and what replaces them ({tmp} is a temporary directory).
WORDS = {
    "PATH_OR_URL": "{tmp}/scheduler.db",
    "DB": "{tmp}/scheduler.db",
    "COMMAND": "status",
    "SECONDS": "10",
    "MODULE": "my_tasks",
    "NAME": "sweep",
    "ID": "run_0123456789abcdef",
    "DIR": "{tmp}",
    "PATH": "{tmp}/file",
    "JSON": "{}",
}

#: Run by the examples' script: the block, then, for a tasks module, its register on a store, twice.
DRIVER = """
import json, runpy, sys
from agent.scheduler import ScheduleStore, TaskRegistry

namespace = runpy.run_path(sys.argv[1], run_name="__main__")
register = namespace.get("register")
found = {"register": callable(register)}
if callable(register):
    with ScheduleStore(sys.argv[2]) as store:
        for _ in range(2):  # the worker's first start, then a restart on the same database
            tasks = TaskRegistry()
            register(tasks, store)
        schedules = store.list(enabled=None)
        found["schedules"] = [s.name for s in schedules]
        found["unregistered_targets"] = [s.target for s in schedules if s.target not in tasks]
print(json.dumps(found))
"""


def python_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang == "python"]


def run_example(block: Block, tmp: Path) -> dict[str, object]:
    home = tmp / "home"
    (home / ".actp").mkdir(parents=True)
    with ScheduleStore(home / ".actp" / "scheduler.db") as store:  # as after a worker's first start
        store.add(ScheduleDefinition(name="seeded", trigger_type="interval", expression="15m", target="sweep"))
    code = block.text
    for placeholder, value in PLACEHOLDERS.items():
        code = code.replace(placeholder, value.format(tmp=tmp))
    script = tmp / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ACTP_", "TELEGRAM_", "SUPABASE_"))}
    env |= {"HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(script), str(tmp / "tasks.db")],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"{block.where}: the example failed\n{code}\n{done.stderr}"
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("block", [b for b in python_blocks() if b.kind != "not run"], ids=lambda b: b.where)
def test_each_python_example_of_the_readme_and_the_docs_runs(block: Block, tmp_path: Path) -> None:
    found = run_example(block, tmp_path)
    if found["register"]:  # a tasks module: its schedules are added once and run registered tasks
        names = found["schedules"]
        assert isinstance(names, list) and names, f"{block.where}: register added no schedule"
        assert len(names) == len(set(names))
        assert found["unregistered_targets"] == [], f"{block.where}: schedules whose task is not registered"


def test_the_examples_found_are_the_ones_the_pages_show() -> None:
    found = python_blocks()
    assert len(found) >= 4, [b.where for b in found]  # the extraction has not gone blind
    skipped = [b for b in found if b.kind == "not run"]
    assert all(b.arg for b in skipped), "a block that is not run says why"
    assert len(skipped) <= 2, [b.where for b in skipped]
    assert any(b.kind == "file" and b.arg == "~/actp-tasks/hello_tasks.py" for b in found)


def substituted(command: Command, tmp: Path) -> list[str]:
    """The command's arguments with optional parts included and placeholder words replaced."""
    argv: list[str] = []
    for shown in command.argv:
        word = shown.removeprefix("[").removesuffix("]")
        if word in {"...", ""}:
            continue
        argv.append(WORDS[word].format(tmp=tmp) if word in WORDS else word)
    return argv


def parse_error(command: Command, argv: list[str]) -> str | None:
    """What the program's own parser says of ``argv``: None when it accepts it, else its error line."""
    parse = build_parser().parse_args if command.program == "agent.scheduler" else worker.parse_args
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parse(argv)
    except SystemExit as exc:
        return f"exit {exc.code}: {errors.getvalue().strip()}"
    return None


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in commands(page)]


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: f"{c.where} {c.text[:60]}")
def test_each_command_line_of_the_readme_and_the_docs_parses(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = substituted(command, tmp_path)
    for option, value in itertools.pairwise(argv):
        if option == "--workdir":  # it must exist; the page's own steps create it
            Path(value).expanduser().mkdir(parents=True, exist_ok=True)
    assert parse_error(command, argv) is None, f"{command.where}: {command.text}\n{parse_error(command, argv)}"


def test_the_command_lines_found_are_the_ones_the_pages_show() -> None:
    found = all_commands()
    texts = [" ".join(c.argv) for c in found]
    assert len(found) >= 25, texts  # the extraction has not gone blind
    for shown in ("emit report.ready --payload", "propose ~/actp-tasks/hello_proposal.json", "reconcile --dry-run"):
        assert any(t.startswith(shown) for t in texts), shown
    assert any(c.program == "worker.py" for c in found)


def test_a_command_line_the_parser_refuses_is_reported() -> None:
    wrong = Command("here", "python -m agent.scheduler runs --limit 0", "agent.scheduler", ["runs", "--limit", "0"])
    error = parse_error(wrong, wrong.argv)
    assert error is not None and "--limit" in error


def test_every_key_the_readme_gives_a_proposal_is_a_key_of_the_proposal_format() -> None:
    text = section((ROOT / "README.md").read_text(), "Agent-proposed schedules")
    table = text[text.index("| key |") : text.index("\n\n", text.index("| key |"))]
    keys = [key for row in table.splitlines()[2:] for key in _code_spans(row.split("|")[1])]
    assert len(keys) >= 15, keys
    with pytest.raises(InvalidProposal) as refused:
        ScheduleProposal.from_dict(dict.fromkeys(keys, "?"))  # wrong values, but every key known
    assert [f.field for f in refused.value.findings if f.rule is Rule.UNKNOWN_FIELD] == []
    with pytest.raises(InvalidProposal) as empty:
        ScheduleProposal.from_dict({})
    required = {f.field for f in empty.value.findings if f.rule is Rule.REQUIRED}
    assert required and required <= set(keys)


def _code_spans(text: str) -> list[str]:
    return [part for i, part in enumerate(text.split("`")) if i % 2 == 1]
