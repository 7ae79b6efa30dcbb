"""README's troubleshooting table, read as the tests execute it: each row's command as written, and
its message as a pattern (DIR is the test's folder, `...` any text)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TEXT = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    """The README section under `## title`, up to the next `## ` heading."""
    return TEXT[TEXT.index(f"## {title}\n"):].split("\n## ")[0]


@dataclass(frozen=True)
class Row:
    command: str  # what the user wrote, without backticks
    condition: str  # the words after it ("(a cluster without GPUs)"), or ""
    message: str  # what raysweep says, as README prints it

    def expects(self, tmp: Path | str = "DIR", **names: str) -> re.Pattern[str]:
        """The message as a regular expression: DIR is `tmp` (but `data_root=DIR (`, a placeholder raysweep
        prints itself, stays), each key of `names` (HEAD) its value, `...` stands for any text."""

        def fill(part: str) -> str:
            for name, value in names.items():
                part = part.replace(name, value)
            return re.escape(re.sub(r"DIR(?! \()", str(tmp), part))

        parts = [fill(part) for part in self.message.split("...")]
        return re.compile(".*".join(parts), re.DOTALL)


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def bad_input_rows() -> list[Row]:
    """The rows of the first table of README's Troubleshooting (bad input, exit status 2)."""
    table = section("Troubleshooting").split("| you wrote | raysweep says |")[1].split("\n\n")[0]
    rows = []
    for line in table.strip().splitlines()[1:]:
        wrote, says = _cells(line)
        command, condition = re.fullmatch(r"`([^`]+)`\s*(.*)", wrote).groups()
        rows.append(Row(command, condition, says))
    return rows


def row(command: str) -> Row:
    """The one row whose command is `command`."""
    found = [r for r in bad_input_rows() if r.command == command]
    assert len(found) == 1, f"README's troubleshooting table has {len(found)} rows for `{command}`"
    return found[0]
