"""Every command ends the same way (llmpi.job.exits): bad input is one line and exit 2, a failing disk one line and exit
74, ``--debug`` adds the traceback, and a bug keeps its traceback."""

from __future__ import annotations

import errno

import pytest

from llmpi import status
from llmpi.job import exits as cli
from llmpi.job.errors import DataError, DiskError


def test_user_errors_are_one_line_with_their_status(capsys):
    def bad_input():
        raise DataError("data.root: CIFAR-10 is not in /nowhere; put it there")

    assert cli.run(bad_input) == 2
    assert capsys.readouterr().err == "llmpi: error: data.root: CIFAR-10 is not in /nowhere; put it there\n"

    def full():
        raise DiskError(errno.ENOSPC, "no space left on the device of /x; free space", "/x/a.h5")

    assert cli.run(full) == 74
    assert capsys.readouterr().err == "llmpi: error: no space left on the device of /x; free space\n"


def test_a_disk_fault_raised_by_a_library_is_explained_too(tmp_path, capsys):
    def savefig():  # what matplotlib or torch raise when the disk fills under them
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.png"))

    assert cli.run(savefig) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no space left on the device of {tmp_path} while writing {tmp_path}" in err


def test_debug_adds_the_traceback_and_bugs_keep_theirs(capsys):
    def bad_input():
        raise DataError("a message")

    assert cli.run(bad_input, debug=True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("llmpi: error: a message")
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0)
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 3) == 3


def test_status_takes_debug_like_every_command(tmp_path, capsys):
    missing = str(tmp_path / "none.h5")
    assert status.main([missing]) == 2
    assert capsys.readouterr().err == f"llmpi: error: {missing} does not exist\n"
    assert status.main([missing, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
