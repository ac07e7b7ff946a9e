"""The run-directory paths that the README, docs/ and configs/ tell users to type name what
the commands write (``runs/sft/policy``, ``runs/rm/reward_model``), not folders that no
command makes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PATH = re.compile(r"runs/[A-Za-z0-9<>_.-]+/([A-Za-z0-9_.-]+)")


def test_documented_run_paths_are_written_by_a_command():
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tether").rglob("*.py"))
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").glob("*.yaml"))]
    named = {(doc.relative_to(ROOT).as_posix(), sub) for doc in documents
             for sub in RUN_PATH.findall(doc.read_text(encoding="utf-8"))}
    assert named  # the pattern finds the paths it is meant to check
    # a command writes <run>/<sub> where the code joins it onto a path: `path / "sub"`
    unknown = sorted((doc, sub) for doc, sub in named if not re.search(rf"/ [\"']{re.escape(sub)}[\"']", source))
    assert unknown == [], unknown


def test_readme_says_which_commands_take_a_config_file():
    """The README's sentence on ``--config`` matches the parser: the commands it names as taking
    a config file have the option, the ones it names as taking plain options do not."""
    from tether.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    match = re.search(r"The training commands \((.*?)\) and (.*?) take `--config FILE.yaml`.*?"
                      r"The other commands \((.*?)\) take plain options", readme)
    assert match, "README: the sentence on which commands take --config is missing"
    with_config = re.findall(r"`([a-z-]+)`", match.group(1) + match.group(2))
    without = re.findall(r"`([a-z-]+)`", match.group(3))

    def has_config(name: str) -> bool:
        return any("--config" in action.option_strings for action in commands[name]._actions)

    assert with_config and all(has_config(name) for name in with_config), with_config
    assert without and not any(has_config(name) for name in without), without
    from tether.train.ppo_cli import commands as online_commands

    variants = set(online_commands()) - {"ppo"}  # "ppo and its variants": the algorithm table's other rows
    assert set(commands) == set(with_config) | set(without) | variants
