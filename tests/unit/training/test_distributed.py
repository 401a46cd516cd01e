"""Process topology: one process gets the environment DeepSpeed needs without MPI discovery; a launcher's own
settings are left alone; with no process group, a flag is this process's own."""

import os

import pytest

from pipeline.training import distributed

TOPOLOGY = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_topology(monkeypatch):
    for name in TOPOLOGY:
        monkeypatch.delenv(name, raising=False)


def test_one_process_gets_rank_zero_of_one_on_a_free_port(clean_topology, monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    distributed.single_process_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    assert distributed.is_main_process() and distributed.world_size() == 1


def test_a_launchers_settings_are_kept(clean_topology, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.single_process_env()
    assert "MASTER_PORT" not in os.environ and not distributed.is_main_process()


def test_without_a_process_group_a_flag_is_this_processs_own():
    assert distributed.any_rank(True, "cpu") is True and distributed.any_rank(False, "cpu") is False
    distributed.finish()  # nothing to tear down: a no-op
