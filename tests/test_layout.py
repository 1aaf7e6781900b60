"""The package's layering, as README's "Layout" states it: `cli` and `demo` on top, then
`daemon` (and `sim` beside it), then `aimharder` and `db`, the shared ground at the
bottom; `sim` imports nothing of prebookd's; no module imports another that imports it
back. The contracts live in pyproject.toml ([tool.importlinter]); this runs them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 broken." in done.stdout, done.stdout


def test_no_module_is_much_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "prebookd").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 440
    }
    assert not long, f"modules to split: {long}"
