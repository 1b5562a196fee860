"""``sparseimplant generate`` as a cancellable subprocess whose progress lines can be polled.

The Slicer module runs inference this way (as TotalSegmentator and MONAIAuto3DSeg do) so the user
interface stays responsive and a crash or out-of-memory in the network cannot take Slicer down.
Qt-free: the widget polls ``GenerateJob.poll()`` from a timer.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from ..contract import ERROR_PREFIX, WARNING_PREFIX
from ..progress import ProgressEvent

READER_ERROR_PREFIX = "sparseimplant: lost the worker's output: "

# Win32 constants (subprocess defines them only on Windows).
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def _hidden_startupinfo() -> "subprocess.STARTUPINFO":  # type: ignore[name-defined]
    info = subprocess.STARTUPINFO()  # type: ignore[attr-defined]
    info.dwFlags |= STARTF_USESHOWWINDOW
    info.wShowWindow = SW_HIDE
    return info


def worker_options(os_name: str = os.name) -> dict:
    """Popen options that put the worker in its own process group (so cancel can end the whole tree).

    On Windows its console window is hidden, as ``slicer.util.launchConsoleProcess`` hides it: a
    visible console pops up on every run, and closing it kills the job. The launcher's children
    (PythonSlicer starts the real Python) inherit that hidden console."""
    if os_name == "posix":
        return {"start_new_session": True}
    return {"startupinfo": _hidden_startupinfo(), "creationflags": CREATE_NEW_PROCESS_GROUP}


def killer_options(os_name: str = os.name) -> dict:
    """Popen options for ``taskkill``, which would otherwise flash a console of its own."""
    if os_name == "posix":
        return {}
    return {"startupinfo": _hidden_startupinfo(), "creationflags": CREATE_NO_WINDOW}


@dataclass(frozen=True)
class GenerateRequest:
    """Arguments of one ``sparseimplant generate`` run."""

    input_path: Path
    output_dir: Path
    model: Optional[str] = None
    device: str = "auto"
    threshold_hu: Optional[float] = None
    reference: Optional[Path] = None
    model_dir: Optional[Path] = None
    refine: bool = True  # False: --refine-model none
    straighten: bool = True  # False: --no-straighten (the network sees the skull as it lies in the file)
    method: str = "auto"  # --method: auto (the network, the fitted mean skull where it leaves the opening), network, fitted, mirror
    mesh_formats: Sequence[str] = ("vtk",)  # Slicer exports STL/OBJ itself; VTK keeps the distance array
    preview: bool = False  # the module draws its own three views, so no preview.png

    def command(self, python: str = sys.executable) -> List[str]:
        command = [python, "-m", "SparseImplantLib.cli", "generate", str(self.input_path), "-o", str(self.output_dir),
                   "--device", self.device, "--method", self.method, "--progress", "json",
                   "--mesh-formats", ",".join(self.mesh_formats)]
        if not self.preview:
            command.append("--no-preview")
        optional = {"--model": self.model, "--threshold": self.threshold_hu, "--reference": self.reference,
                    "--model-dir": self.model_dir}
        for flag, value in optional.items():
            if value is not None:
                command += [flag, str(value)]
        if not self.refine:
            command += ["--refine-model", "none"]
        if not self.straighten:
            command.append("--no-straighten")
        return command


class GenerateJob:
    """One running subprocess: progress events and log lines arrive through ``poll()``.

    The worker's output is UTF-8 both ways (``PYTHONIOENCODING``), whatever the system's code page,
    so a non-ASCII path in a message cannot break the reader."""

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[Path] = None) -> None:
        self.command = list(command)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: List[str] = []
        self.cancelled = False
        self.reader_error: Optional[str] = None
        self._stream_closed = False
        environment = dict(os.environ if env is None else env)
        environment["PYTHONIOENCODING"] = "utf-8"
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            encoding="utf-8", errors="replace", bufsize=1, env=environment, cwd=cwd, **worker_options(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Forward output lines; whatever happens, end with the marker so the job can finish."""
        assert self._process.stdout is not None
        try:
            for line in self._process.stdout:
                self._lines.put(line.rstrip("\n"))
        except Exception as error:  # noqa: BLE001 - any failure here must still end the job
            self.reader_error = f"{type(error).__name__}: {error}"
            self._lines.put(READER_ERROR_PREFIX + self.reader_error)
            self._kill()  # nobody reads its output any more: it would block on a full pipe
        finally:
            self._lines.put(None)

    def poll(self) -> List[ProgressEvent]:
        """Progress events since the last call; other output lines go to ``log``."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._stream_closed = True
                continue
            event = ProgressEvent.from_line(line)
            if event is not None:
                events.append(event)
            else:
                self.log.append(line)
        return events

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been polled."""
        return self._process.poll() is not None and self._stream_closed and self._lines.empty()

    @property
    def returncode(self) -> Optional[int]:
        return self._process.poll()

    @property
    def succeeded(self) -> bool:
        return self.finished and self.returncode == 0 and not self.cancelled and self.reader_error is None

    def warnings(self) -> List[str]:
        """The CLI's warning lines (without their prefix), in order."""
        return [line[len(WARNING_PREFIX):] for line in self.log if line.startswith(WARNING_PREFIX)]

    def error_message(self) -> str:
        """The one-line cause for a message box: the CLI's error line, else the reader's failure, else
        the last output line."""
        for line in reversed(self.log):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
        if self.reader_error is not None:
            return f"lost the worker's output ({self.reader_error}): run Generate Implant again"
        tail = [line for line in self.log if line.strip()]
        return tail[-1] if tail else f"the process ended with exit code {self.returncode}"

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (scripts and tests; the module polls instead)."""
        code = self._process.wait(timeout)
        self._reader.join(timeout)
        self.poll()
        return code

    def cancel(self) -> None:
        """Kill the whole process tree (the CLI may have started worker threads or processes)."""
        if self._process.poll() is not None:
            return
        self.cancelled = True
        self._kill()

    def _kill(self) -> None:
        if self._process.poll() is not None:
            return
        if os.name == "posix":
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended between the poll and the kill
                pass
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True,
                           check=False, **killer_options())
        self._process.wait()
