"""The documentation builds with warnings as errors (autodoc, generated tables, links)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings(tmp_path):
    command = [
        sys.executable, "-m", "sphinx",
        "-W", "--keep-going",
        "-b", "html",
        "-d", str(tmp_path / "doctrees"),
        str(ROOT / "docs"),
        str(tmp_path / "html"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        print(done.stdout)
        print(done.stderr)
    assert done.returncode == 0, f"sphinx exited with {done.returncode}:\n{done.stderr[-4000:]}"
    assert (tmp_path / "html" / "index.html").is_file()
