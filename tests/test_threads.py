"""OpenMP's wait policy: passive for the torchshrink command unless the user chose, untouched for a library import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SHOW = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"
SCRIPT = Path(sys.executable).with_name("torchshrink")  # the console script of the installed package


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    return subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, check=True)


def test_an_import_sets_nothing() -> None:
    """A library import leaves the process's environment alone; so does importing the command line to call
    main() in-process."""
    assert _run([sys.executable, "-c", f"import torchshrink; import torchshrink.cli; {SHOW}"]).stdout.strip() == "None"


def _spin_count(args: list[str], **env: str) -> str:
    """GOMP_SPINCOUNT as torch's OpenMP runtime (libgomp) read it when torch loaded: 0 under PASSIVE."""
    report = _run(args, OMP_DISPLAY_ENV="VERBOSE", **env).stderr
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", report)
    if found is None:
        pytest.skip("torch's OpenMP runtime is not libgomp: it reports no spin count")
    return found.group(1)


COMMANDS = {
    "python -m torchshrink": [sys.executable, "-m", "torchshrink", "--version"],
    "console script": [str(SCRIPT), "--version"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_waits_passively(command: str) -> None:
    """The runtime itself saw PASSIVE: the variable was set before torch loaded it."""
    if command == "console script" and not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed")
    assert _spin_count(COMMANDS[command]) == "0"


def test_the_command_keeps_the_users_choice() -> None:
    assert _spin_count(COMMANDS["python -m torchshrink"], OMP_WAIT_POLICY="ACTIVE") != "0"


def test_a_library_import_keeps_the_runtime_default() -> None:
    assert _spin_count([sys.executable, "-c", "import torchshrink"]) != "0"


def test_started_as_command_reads_how_the_interpreter_was_started() -> None:
    from torchshrink._threads import started_as_command

    assert started_as_command(["/venv/Scripts/torchshrink.exe", "study"], ["/venv/Scripts/torchshrink.exe", "study"])
    assert not started_as_command(["/usr/bin/mytool"], ["python", "/usr/bin/mytool"])
    assert not started_as_command([], [])
    assert not started_as_command(["-m", "a", "b", "c"], ["python", "-m", "x"])  # a mismatch claims nothing
