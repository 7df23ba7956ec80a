"""Running the gateway's command line as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALLY_") and k != "PORT"}
    clean["ALLY_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


ROOT = Path(__file__).resolve().parents[2]
