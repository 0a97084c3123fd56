"""Names that become paths: a skill's name is a folder under data/skills, a Dagster partition key, a folder under
the work directory, and part of run names and of file names under `--out`.

One strict pattern wherever a name enters (the folder scan, the sensor, the command line, a partition key, a
skill.yaml `name`), checked before any path is built from it: `../../x`, `a/b` or an empty name never reaches the
filesystem.
"""

from __future__ import annotations

import re

SKILL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RULE = "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or a digit"


class InvalidName(ValueError):
    pass


def is_skill_name(name: object) -> bool:
    return isinstance(name, str) and SKILL_NAME.fullmatch(name) is not None


def check_skill_name(name: object, where: str) -> str:
    """`name` if it is a valid skill name; else InvalidName saying where it came from and what is allowed."""
    if not is_skill_name(name):
        raise InvalidName(f"{where}: skill name {name!r} is refused: a skill name is {RULE}")
    return name
