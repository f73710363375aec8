"""What the README documents exists. LMI's users complained of docs that drifted from the code
(deleted modules still referenced, documented flags that the script rejects), so every
repository path the README names must exist, and every option it writes after one of our
commands (`lmi-compile SUB`, `lmi-serve`, `python3 scripts/X.py`, or a `VAR=value` before
`bash scripts/X.sh`) must be one that command accepts."""

from __future__ import annotations

import re
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
ENDS_COMMAND = {"|", "||", "&&", ";", "&", "then"}


def code_spans(markdown: str) -> list[str]:
    """Each line of a fenced block, and each inline `code` span outside them."""
    spans, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            spans.append(line)
        else:
            spans += re.findall(r"`([^`]+)`", line)
    return spans


def _options(command) -> set[str]:
    return {"--help"} | {name for param in command.params for name in param.opts + param.secondary_opts}


def documented_options(spans: list[str]) -> list[tuple[str, str, bool]]:
    """(command, option, accepted) for every option written after one of our commands."""
    from lmi_compile.cli import app as compile_app
    from lmi_runtime.cli import app as serve_app

    compile_cli, serve_cli = typer.main.get_command(compile_app), typer.main.get_command(serve_app)
    found = []
    for span in spans:
        tokens, current = span.split(), None
        for at, token in enumerate(tokens):
            following = tokens[at + 1] if at + 1 < len(tokens) else ""
            if token in ENDS_COMMAND or token.endswith(";"):
                current = None
            elif token == "lmi-compile":
                if re.fullmatch(r"[a-z][a-z-]*", following):  # a subcommand, which must exist
                    sub = compile_cli.commands.get(following)
                    found.append(("lmi-compile", following, sub is not None))
                    current = (f"lmi-compile {following}", _options(sub)) if sub else None
                else:
                    current = ("lmi-compile", _options(compile_cli))
            elif token == "lmi-serve":
                current = ("lmi-serve", _options(serve_cli))
            elif re.fullmatch(r"scripts/\w+\.py", token):
                source = (REPO / token).read_text()
                current = (token, {"--help"} | set(re.findall(r"[\"'](--[a-z0-9-]+)[\"']", source)))
            elif re.fullmatch(r"scripts/\w+\.sh", token):
                source = (REPO / token).read_text()
                for setting in tokens[:at]:
                    if name := re.match(r"([A-Z][A-Z0-9_]*)=", setting):
                        found.append((token, name[1], re.search(rf"\$\{{?{name[1]}\b", source) is not None))
            elif current and (option := re.match(r"\[?(--[a-z0-9][a-z0-9-]*)", token)):
                found.append((current[0], option[1], option[1] in current[1]))
    return found


def test_every_documented_option_is_accepted():
    found = documented_options(code_spans((REPO / "README.md").read_text()))
    assert len(found) > 40  # the README's commands were read at all
    assert [(command, option) for command, option, accepted in found if not accepted] == []


def test_every_documented_path_exists():
    named = {token.strip(".,;:()[]'\"") for span in code_spans((REPO / "README.md").read_text()) for token in span.split()}
    paths = sorted(t for t in named if re.match(r"(runtime|compile|scripts|tests|recipes)/", t))
    assert len(paths) > 30
    assert [p for p in paths if not any(REPO.glob(p.rstrip("/")))] == []


def test_drift_is_caught():
    """The check itself: a removed option, subcommand and script setting are each reported."""
    spans = ["lmi-serve --no-such-flag", "lmi-compile partition --model x", "NOPE=1 bash scripts/gpu_session.sh",
             "python3 scripts/bench_gpu.py --tokenizer DIR [--gone]"]
    rejected = [(command, option) for command, option, accepted in documented_options(spans) if not accepted]
    assert rejected == [("lmi-serve", "--no-such-flag"), ("lmi-compile", "partition"),
                        ("scripts/gpu_session.sh", "NOPE"), ("scripts/bench_gpu.py", "--gone")]
