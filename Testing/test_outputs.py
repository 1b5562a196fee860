"""Result sets move into their folder whole, replace only what the tool wrote, clash atomically, and
leave nothing of a dead run behind (issue 22, items 1-3 and 9; README, "What happens when things go
wrong")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.outputs import HOST, LOCK, MANIFEST, UNMOVED_PREFIX, staged_output
from SparseImplantLib.pipeline.io import write_volume


@pytest.fixture
def skull_file(tmp_path, synthetic_skull):
    return write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])


def write_set(folder, files: dict, overwrite: bool = False) -> None:
    """One run: stage ``files`` (name -> text) and move them into ``folder``."""
    with staged_output(folder, sorted(files), overwrite) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def visible(folder) -> dict:
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_overwrite_replaces_the_whole_set_and_only_what_the_tool_wrote(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    write_set(out, {"implant.stl": "old", "report.json": "old"})
    write_set(out, {"report.json": "new"}, overwrite=True)  # this run wrote no implant
    assert visible(out) == {"notes.txt": "mine", "report.json": "new"}
    assert json.loads((out / MANIFEST).read_text())["files"] == ["report.json"]


def test_an_earlier_runs_other_files_count_as_results(tmp_path):
    """Without --overwrite a new set may not land beside an earlier run's, even when no name clashes."""
    out = tmp_path / "out"
    write_set(out, {"implant.obj": "old"})
    with pytest.raises(SparseImplantError, match="already holds implant.obj: choose another folder or pass --overwrite"):
        write_set(out, {"implant.stl": "new"})
    (out / "implant.obj").unlink()  # files the user removed no longer count
    write_set(out, {"implant.stl": "new"})


def test_concurrent_runs_clash_at_the_move_and_the_loser_keeps_its_results(tmp_path):
    out = tmp_path / "out"
    first, second = staged_output(out, ["implant.nrrd"]), staged_output(out, ["implant.nrrd"])
    (first.__enter__() / "implant.nrrd").write_text("first")  # both start on an empty folder
    (second.__enter__() / "implant.nrrd").write_text("second")
    first.__exit__(None, None, None)
    with pytest.raises(SparseImplantError, match="received implant.nrrd from another run while this one worked") as error:
        second.__exit__(None, None, None)
    assert visible(out) == {"implant.nrrd": "first"}
    kept = [p for p in out.iterdir() if p.name.startswith(UNMOVED_PREFIX)]
    assert len(kept) == 1 and str(kept[0]) in str(error.value) and (kept[0] / "implant.nrrd").read_text() == "second"
    assert not (out / LOCK).exists() and not any(p.name.startswith(".staging-") for p in out.iterdir())


def test_a_mover_finding_the_lock_of_a_live_run_stops_and_keeps_its_results(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SparseImplantError, match=f"another run \\(process {os.getppid()} on {HOST}\\) is moving"):
        with staged_output(out, ["a.nrrd"]) as staging:
            (staging / "a.nrrd").write_text("mine")
            (out / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": HOST}))  # the parent is alive
    assert (out / LOCK).exists() and visible(out) == {}
    assert [(p / "a.nrrd").read_text() for p in out.iterdir() if p.name.startswith(UNMOVED_PREFIX)] == ["mine"]


def test_a_move_cut_short_by_a_kill_is_cleared_by_the_next_run(tmp_path):
    """A lock whose process is gone marks a half-moved set: the next run removes every file it touched."""
    out = tmp_path / "out"
    write_set(out, {"a.nrrd": "old", "b.nrrd": "old"})
    (out / "notes.txt").write_text("mine")
    (out / "a.nrrd").write_text("new")  # the dead run had moved one of its two files
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": HOST, "touches": ["a.nrrd", "b.nrrd"]}))
    with pytest.warns(UserWarning, match="removed the incomplete results of a run"):
        write_set(out, {"c.nrrd": "next"})  # no --overwrite needed: nothing of that set was complete
    assert visible(out) == {"notes.txt": "mine", "c.nrrd": "next"} and not (out / LOCK).exists()


def test_a_move_killed_after_it_completed_keeps_its_results(tmp_path):
    """Killed between writing the manifest and removing the lock: the set is whole and stays."""
    out = tmp_path / "out"
    write_set(out, {"a.nrrd": "whole", "b.nrrd": "whole"})
    run = json.loads((out / MANIFEST).read_text())["run"]
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": HOST, "run": run, "touches": ["a.nrrd", "b.nrrd"]}))
    with pytest.raises(SparseImplantError, match="already holds a.nrrd, b.nrrd"):
        write_set(out, {"a.nrrd": "next"})
    assert visible(out) == {"a.nrrd": "whole", "b.nrrd": "whole"} and not (out / LOCK).exists()


def test_staging_folders_of_dead_processes_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    # A run killed with SIGKILL while it wrote its results (nothing can clean up after that).
    script = ("import sys\nfrom SparseImplantLib.outputs import staged_output\n"
              "with staged_output(sys.argv[1], ['a.nrrd']) as staging:\n"
              "    (staging / 'a.nrrd').write_text('half')\n    print('staged', flush=True)\n    sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=PROJECT_ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == "staged\n"
    child.kill()
    child.wait()
    child.stdin.close()
    child.stdout.close()
    killed = [p.name for p in out.iterdir() if p.name.startswith(".staging-")]
    assert len(killed) == 1
    alive = out / f".staging-{os.getppid()}-{HOST}-abcd1234"  # another run, still working
    elsewhere = out / f".staging-{dead_pid()}-another-host-abcd1234"  # a process on another machine
    alive.mkdir()
    elsewhere.mkdir()
    write_set(out, {"a.nrrd": "whole"})
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".staging-")) == sorted([alive.name, elsewhere.name])
    assert visible(out) == {"a.nrrd": "whole"}


def test_interrupts_during_the_move_wait_until_the_set_is_complete(tmp_path, monkeypatch):
    # Python's own Ctrl-C handling, whatever earlier tests in this process left behind (this test
    # failed once in three full runs on a loaded machine, DID NOT RAISE, and never alone).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = tmp_path / "out"
    replace = os.replace

    def interrupted_replace(source, target):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C between two files of the set
        replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_set(out, {"a.nrrd": "1", "b.nrrd": "2", "c.nrrd": "3"})
    monkeypatch.undo()
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])
    assert visible(out) == {"a.nrrd": "1", "b.nrrd": "2", "c.nrrd": "3"}
    assert json.loads((out / MANIFEST).read_text())["files"] == ["a.nrrd", "b.nrrd", "c.nrrd"]
    assert not (out / LOCK).exists() and not any(p.name.startswith(".staging-") for p in out.iterdir())


def test_a_failed_run_removes_the_folders_it_created(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out, ["a.nrrd"]):
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with staged_output(kept, ["a.nrrd"]):
            raise RuntimeError("boom")
    assert kept.is_dir() and list(kept.iterdir()) == []  # a folder the user had stays


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, skull_file, model_dir):
    """The Slicer module and job schedulers stop runs with SIGTERM: the staging folder must go too."""
    out = tmp_path / "out"
    script = ("import sys\nfrom SparseImplantLib import cli\nfrom SparseImplantLib.pipeline import generate as pipeline\n"
              "def stall(*args, **kwargs):\n    print('network', flush=True)\n    sys.stdin.read()\n"
              "pipeline.design_implant = stall\nsys.exit(cli.main(sys.argv[1:]))\n")
    child = subprocess.Popen([sys.executable, "-c", script, "generate", str(skull_file), "-o", str(out), "--model-dir",
                              str(model_dir), "--progress", "none"], cwd=PROJECT_ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline() == "network\n"
    assert any(p.name.startswith(".staging-") for p in out.iterdir())
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 143 and stderr == "sparseimplant: error: terminated\n"
    assert not out.exists()
