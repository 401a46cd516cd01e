"""The follower's decisions, with the registry's answers given (the real registry, weights and engine are in
tests/integration/test_openai_serving.py): what serves when the registry fails, when a new version fails to load,
and that a switch waits for the old version's requests in flight."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from pipeline.serving.champion_follower import ChampionFollower, NoChampion
from pipeline.tracking import registry


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The alias as a variable, weights directories per version, and what the engine was asked to do."""
    state = {"alias": "1", "broken": set(), "registry_down": False, "calls": []}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # not ./mlflow.db

    def champion(_client, _name):
        if state["registry_down"]:
            raise registry.RegistryError("model registry at http://mlflow:5000: connection refused")
        return None if state["alias"] is None else SimpleNamespace(version=state["alias"])

    def cached_weights(_name, version, _root):
        path = tmp_path / f"v{version}"
        path.mkdir(exist_ok=True)
        (path / "train_config.json").write_text(json.dumps({"train.system_prompt": f"prompt {version}"}))
        return path

    def load(path):
        if path.name in state["broken"]:
            raise OSError(f"{path}/model.safetensors: truncated")
        state["calls"].append(("load", path.name))

    monkeypatch.setattr(registry, "champion", champion)
    monkeypatch.setattr(registry, "cached_weights", cached_weights)
    follower = ChampionFollower("chat", tmp_path, load, lambda path: state["calls"].append(("unload", path.name)),
                                poll_seconds=3600, drain_seconds=5)
    return follower, state


def test_the_registry_down_or_a_version_that_fails_to_load_leaves_what_serves_serving(world, caplog):
    follower, state = world

    async def scenario():
        await follower.start()
        assert (follower.current.version, follower.current.system_prompt) == ("1", "prompt 1")
        state["registry_down"] = True
        assert (await asyncio.to_thread(follower.poll)).version == "1"  # never "no champion"
        assert "connection refused; chat/1 keeps serving" in caplog.text
        state["registry_down"], state["alias"], state["broken"] = False, "2", {"v2"}
        assert (await asyncio.to_thread(follower.poll)).version == "1"
        assert "models:/chat/2 failed to load: OSError" in follower.last_error
        assert "chat/1 keeps serving" in caplog.text
        state["broken"] = set()  # the next poll tries again
        assert (await asyncio.to_thread(follower.poll)).version == "2" and follower.last_error is None
        follower.stop()

    asyncio.run(scenario())
    assert state["calls"] == [("load", "v1"), ("load", "v2"), ("unload", "v1")]


def test_a_switch_waits_for_the_old_versions_requests_and_holds_new_ones_meanwhile(world):
    follower, state = world

    async def scenario():
        await follower.start()
        in_flight = await follower.acquire()
        state["alias"] = "2"
        switching = asyncio.create_task(asyncio.to_thread(follower.poll))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(follower.acquire())
        await asyncio.sleep(0.3)
        assert not switching.done() and not waiting.done()  # held, not failed, while v1 finishes
        assert ("unload", "v1") not in state["calls"]
        await follower.release(in_flight)
        assert (await waiting).version == "2" and (await switching).version == "2"
        follower.stop()

    asyncio.run(scenario())
    assert state["calls"][-1] == ("unload", "v1")


def test_nothing_promoted_is_a_clear_no_champion_until_a_night_promotes(world):
    follower, state = world
    state["alias"] = None

    async def scenario():
        await follower.start()
        with pytest.raises(NoChampion, match="no champion for 'chat' yet: run `make run` first"):
            await follower.acquire()
        state["alias"] = "1"
        await asyncio.to_thread(follower.poll)
        assert (await follower.acquire()).version == "1"
        follower.stop()

    asyncio.run(scenario())
