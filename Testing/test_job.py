"""The worker subprocess as the module runs it: output decoding, a dying reader, Windows options."""

from __future__ import annotations

import subprocess
import sys
import time


from SparseImplantLib.slicer import job as job_module
from SparseImplantLib.slicer.job import GenerateJob, GenerateRequest


def wait_finished(job: GenerateJob, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not job.finished:
        assert time.monotonic() < deadline, "the job never finished"
        job.poll()
        time.sleep(0.02)


def test_output_is_utf8_whatever_the_worker_would_choose(monkeypatch):
    # A worker that would write Latin-1 (a Windows code page, say) is told to write UTF-8; bytes that
    # are not UTF-8 at all become replacement characters instead of killing the reader.
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    script = ("import sys; print('Kraniotomie M\\u00fcller'); sys.stdout.flush(); "
              "sys.stdout.buffer.write(b'bad \\xff byte\\n'); print('sparseimplant: warning: empty \\u00e9')")
    job = GenerateJob([sys.executable, "-c", script])
    wait_finished(job)
    assert job.succeeded, job.log
    assert job.log == ["Kraniotomie Müller", "bad \ufffd byte", "sparseimplant: warning: empty é"]
    assert job.warnings() == ["empty é"]


def test_a_dying_reader_still_ends_the_job(monkeypatch):
    real_popen = subprocess.Popen

    class BrokenStream:
        def __init__(self, stream) -> None:
            self.stream = stream

        def __iter__(self):
            yield self.stream.readline()
            raise OSError("pipe broke")

    def popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        process.stdout = BrokenStream(process.stdout)
        return process

    monkeypatch.setattr(job_module.subprocess, "Popen", popen)
    job = GenerateJob([sys.executable, "-c", "import time; print('first', flush=True); time.sleep(60)"])
    wait_finished(job, timeout_s=20.0)  # not 60 s: the worker is stopped once nobody can read it
    assert not job.succeeded and job.reader_error == "OSError: pipe broke"
    assert "pipe broke" in job.error_message() and "\n" not in job.error_message()


def test_windows_worker_and_taskkill_run_without_a_visible_console(monkeypatch):
    class StartupInfo:  # subprocess.STARTUPINFO exists only on Windows
        dwFlags = 0
        wShowWindow = 1

    monkeypatch.setattr(job_module.subprocess, "STARTUPINFO", StartupInfo, raising=False)
    worker = job_module.worker_options("nt")
    assert worker["startupinfo"].dwFlags & job_module.STARTF_USESHOWWINDOW
    assert worker["startupinfo"].wShowWindow == job_module.SW_HIDE
    assert worker["creationflags"] & job_module.CREATE_NEW_PROCESS_GROUP  # taskkill /T ends the tree
    killer = job_module.killer_options("nt")
    assert killer["startupinfo"].wShowWindow == job_module.SW_HIDE
    assert killer["creationflags"] & job_module.CREATE_NO_WINDOW
    assert job_module.worker_options("posix") == {"start_new_session": True}


def test_module_runs_skip_the_preview():
    command = GenerateRequest(input_path="in.nrrd", output_dir="out").command("python")
    assert "--no-preview" in command and command[command.index("--mesh-formats") + 1] == "vtk"
    assert "--no-preview" not in GenerateRequest("in.nrrd", "out", preview=True).command("python")


def test_the_straightening_switch_reaches_the_command_line():
    """The module's "Straighten the head" checkbox: checked (the default) straightens; unchecked, --no-straighten."""
    assert "--no-straighten" not in GenerateRequest("in.nrrd", "out").command("python")
    assert "--no-straighten" in GenerateRequest("in.nrrd", "out", straighten=False).command("python")
