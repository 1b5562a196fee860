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
from typing import List, Optional, Sequence

from .progress import ProgressEvent

ERROR_PREFIX = "sparseimplant: error: "


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
    mesh_formats: Sequence[str] = ("vtk",)  # Slicer exports STL/OBJ itself; VTK keeps the distance array

    def command(self, python: str = sys.executable) -> List[str]:
        command = [python, "-m", "SparseImplantLib.cli", "generate", str(self.input_path), "-o", str(self.output_dir),
                   "--device", self.device, "--progress", "json", "--mesh-formats", ",".join(self.mesh_formats)]
        optional = {"--model": self.model, "--threshold": self.threshold_hu, "--reference": self.reference,
                    "--model-dir": self.model_dir}
        for flag, value in optional.items():
            if value is not None:
                command += [flag, str(value)]
        if not self.refine:
            command += ["--refine-model", "none"]
        return command


class GenerateJob:
    """One running subprocess: progress events and log lines arrive through ``poll()``."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[Path] = None) -> None:
        self.command = list(command)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: List[str] = []
        self.cancelled = False
        self._stream_closed = False
        posix = os.name == "posix"
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            bufsize=1, env=env, cwd=cwd, start_new_session=posix,
            creationflags=0 if posix else subprocess.CREATE_NEW_PROCESS_GROUP,  # type: ignore[attr-defined]
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
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
        return self.finished and self.returncode == 0 and not self.cancelled

    def error_message(self) -> str:
        """The one-line cause for a message box: the CLI's error line, else the last output line."""
        for line in reversed(self.log):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
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
        if os.name == "posix":
            os.killpg(self._process.pid, signal.SIGKILL)
        else:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True, check=False)
        self._process.wait()
