"""Protected results folders: refused when not empty (unless --force or resume), one run at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from p2pgan.errors import ConfigError
from p2pgan.run.folder import LOCK_NAME, claim_results_dir


def _previous_run(folder: Path) -> None:
    """What a finished run leaves: summary, config, metrics and a weights subfolder."""
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "cluster0.pt").write_bytes(b"w")
    (folder / "summary.json").write_text('{"status": "completed"}')
    (folder / "config.json").write_text("{}")
    (folder / "rounds.jsonl").write_text("{}\n")


def _one_line_error(caught: pytest.ExceptionInfo) -> str:
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and caught.value.exit_code == 2
    return text


def test_a_new_folder_is_created_locked_and_released(tmp_path):
    folder = tmp_path / "runs" / "a"
    with claim_results_dir(folder, force=False, resume=False) as claim:
        assert claim.held and folder.is_dir() and (folder / LOCK_NAME).is_file()
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not claim.held
    claim.release()  # idempotent


def test_a_folder_with_results_is_refused_and_left_alone(tmp_path):
    _previous_run(tmp_path / "r")
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    with pytest.raises(ConfigError) as caught:
        claim_results_dir(tmp_path / "r", force=False, resume=False, key="--out", source="scenario run")
    text = _one_line_error(caught)
    assert text.startswith("scenario run:--out: results folder ") and "--force" in text and "resume" in text
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before  # not even a lock file left
    # the refusal released the lock: a forced claim may follow at once
    claim_results_dir(tmp_path / "r", force=True, resume=False).release()


def test_any_stray_file_makes_a_folder_non_empty(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        claim_results_dir(tmp_path / "r", force=False, resume=False)


def test_force_clears_a_previous_run_without_following_links(tmp_path):
    folder = tmp_path / "r"
    _previous_run(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    with claim_results_dir(folder, force=True, resume=False):
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
    assert (outside / "keep.txt").read_text() == "not the run's"


def test_force_refuses_to_clear_a_folder_no_run_wrote(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError) as caught:
        claim_results_dir(home, force=True, resume=False)
    assert "does not look like a p2pgan results folder" in _one_line_error(caught)
    assert (home / "thesis.tex").read_text() == "precious"


def test_a_refused_claim_does_not_make_a_user_folder_clearable(tmp_path):
    """A refusal must not leave the lock file behind: it would mark the folder as a run's, and a
    following --force would empty a folder no run ever wrote."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="is not empty"):
        claim_results_dir(home, force=False, resume=False)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    with pytest.raises(ConfigError, match="does not look like a p2pgan results folder"):
        claim_results_dir(home, force=True, resume=False)
    assert (home / "thesis.tex").read_text() == "precious"


def test_resume_keeps_the_folder_and_needs_one(tmp_path):
    _previous_run(tmp_path / "r")
    with claim_results_dir(tmp_path / "r", force=False, resume=True):
        assert (tmp_path / "r" / "summary.json").exists() and (tmp_path / "r" / "weights" / "cluster0.pt").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        claim_results_dir(tmp_path / "missing", force=False, resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is empty"):
        claim_results_dir(tmp_path / "empty", force=False, resume=True)
    with pytest.raises(ConfigError, match="use one of them"):
        claim_results_dir(tmp_path / "r", force=True, resume=True)


def test_a_second_claim_on_a_held_folder_is_refused(tmp_path):
    folder = tmp_path / "r"
    first = claim_results_dir(folder, force=False, resume=False)
    with pytest.raises(ConfigError) as caught:
        claim_results_dir(folder, force=True, resume=False)
    text = _one_line_error(caught)
    assert f"is in use by another run (pid {os.getpid()})" in text
    with pytest.raises(ConfigError, match="in use"):
        claim_results_dir(folder, force=False, resume=True)
    first.release()
    claim_results_dir(folder, force=False, resume=False).release()


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from p2pgan.run.folder import claim_results_dir
            claim = claim_results_dir(Path({str(folder)!r}), force=False, resume=False)
            print("held", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            claim_results_dir(folder, force=False, resume=False)
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait(timeout=30)
        with claim_results_dir(folder, force=False, resume=False) as claim:
            assert claim.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_node_processes_do_not_inherit_the_lock(tmp_path):
    with claim_results_dir(tmp_path / "r", force=False, resume=False) as claim:
        assert os.get_inheritable(claim._fd) is False


def test_output_paths_that_are_files_or_cannot_be_created(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for path, words in ((blocker, "is a file (expected a folder)"),
                        (blocker / "sub", "is a file, not a folder"),
                        (tmp_path / ("x" * 300), "unusable path")):
        with pytest.raises(ConfigError) as caught:
            claim_results_dir(path, force=False, resume=False, key="--out", source="scenario run")
        text = _one_line_error(caught)
        assert text.startswith("scenario run:--out: ") and words in text, text
    assert blocker.read_text() == "a file"
