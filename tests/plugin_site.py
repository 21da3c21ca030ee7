"""Install an example plugin package (examples/<name>/) into a folder of its own, as a user's pip would, so a
subprocess with that folder on PYTHONPATH finds its entry points and the checkout stays untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def install_example(name: str, root: Path, package: str) -> Path:
    """The site folder holding examples/`name` installed (without dependencies); `package` must appear in it."""
    source = root / "src"
    shutil.copytree(EXAMPLES / name, source)
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(source)], check=True, timeout=300)
    assert (site / package).is_dir()
    return site


def site_env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1"}
