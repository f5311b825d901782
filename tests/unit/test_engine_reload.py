"""The weight-reload protocol every engine shares: drain, load, bump the version, resume; never mix versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rollout.engines.base import Engine, GenerationAborted, GenerationResult, SamplingOptions, weights_path


class FakeEngine(Engine):
    """Generation takes `delay` seconds per request and reports the weights it ran on; `abortable` requests
    stop at once when aborted."""

    def __init__(self, delay: float = 0.05, abortable: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay
        self.abortable = abortable
        self.weights = "v0"
        self.loads: list[Path] = []
        self.abort_event: asyncio.Event | None = None

    async def _generate(self, prompt_ids, sampling, stop, max_tokens):
        if self.abort_event is None:
            self.abort_event = asyncio.Event()
        weights = self.weights
        if self.abortable:
            try:
                await asyncio.wait_for(self.abort_event.wait(), self.delay)
                raise GenerationAborted()
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(self.delay)
        assert self.weights == weights, "weights changed under a running request"
        return GenerationResult([int(weights[1:])], [0.0], "length", version=-1)

    async def _abort_inflight(self):
        assert self.abort_event is not None
        self.abort_event.set()

    async def _load(self, path: Path):
        await asyncio.sleep(0.01)
        self.loads.append(path)
        self.weights = f"v{len(self.loads)}"
        if self.abort_event is not None:
            self.abort_event.clear()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"")
    return tmp_path


GREEDY = SamplingOptions(temperature=0.0)


def test_requests_in_flight_finish_on_the_old_version_and_new_ones_wait(ckpt: Path):
    async def main():
        engine = FakeEngine(delay=0.1)
        early = [asyncio.create_task(engine.generate([1], GREEDY, (), 1)) for _ in range(4)]
        await asyncio.sleep(0.02)
        reload = asyncio.create_task(engine.load_weights(1, str(ckpt)))
        await asyncio.sleep(0.01)
        assert engine.paused and engine.inflight == 4
        late = [asyncio.create_task(engine.generate([1], GREEDY, (), 1)) for _ in range(4)]
        assert await reload is True
        return await asyncio.gather(*early), await asyncio.gather(*late), engine

    early, late, engine = asyncio.run(main())
    assert [(r.version, r.token_ids) for r in early] == [(0, [0])] * 4
    assert [(r.version, r.token_ids) for r in late] == [(1, [1])] * 4
    assert engine.version == 1 and engine.reloads == 1 and engine.inflight == 0


def test_drain_timeout_aborts_and_reruns_on_the_new_version(ckpt: Path):
    async def main():
        engine = FakeEngine(delay=5.0, abortable=True, drain_timeout_s=0.05)
        running = [asyncio.create_task(engine.generate([1], GREEDY, (), 1)) for _ in range(3)]
        await asyncio.sleep(0.02)
        await engine.load_weights(1, f"file://{ckpt}")
        engine.delay = 0.01
        return await asyncio.gather(*running), engine

    results, engine = asyncio.run(main())
    assert [(r.version, r.token_ids) for r in results] == [(1, [1])] * 3  # wholly re-served by v1
    assert engine.aborted_and_rerun == 3


def test_stale_or_repeated_versions_are_ignored(ckpt: Path):
    async def main():
        engine = FakeEngine(delay=0.0, version=2)
        first = await engine.load_weights(2, str(ckpt))
        second = await engine.load_weights(3, str(ckpt))
        third = await engine.load_weights(3, str(ckpt))
        return first, second, third, engine

    first, second, third, engine = asyncio.run(main())
    assert (first, second, third) == (False, True, False)
    assert engine.version == 3 and len(engine.loads) == 1


def test_force_loads_an_older_version(ckpt: Path):
    async def main():
        engine = FakeEngine(delay=0.0, version=5)
        loaded = await engine.load_weights(0, str(ckpt), force=True)
        result = await engine.generate([1], GREEDY, (), 1)
        return loaded, result, engine

    loaded, result, engine = asyncio.run(main())
    assert loaded and engine.version == 0 and result.version == 0 and len(engine.loads) == 1


def test_a_failed_load_reopens_the_engine_on_the_old_version(ckpt: Path):
    async def main():
        engine = FakeEngine(delay=0.0)

        async def broken(path):
            raise ValueError("bad checkpoint")

        engine._load = broken
        with pytest.raises(ValueError, match="bad checkpoint"):
            await engine.load_weights(1, str(ckpt))
        result = await asyncio.wait_for(engine.generate([1], GREEDY, (), 1), 1.0)
        return result, engine

    result, engine = asyncio.run(main())
    assert result.version == 0 and engine.version == 0


def test_weights_uri_must_name_a_safetensors_folder(tmp_path: Path, ckpt: Path):
    assert weights_path(f"file://{ckpt}") == ckpt
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        weights_path(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        weights_path(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not a file:// URI"):
        weights_path("s3://bucket/ckpt")


def test_request_checks():
    engine = FakeEngine(max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len"):
        asyncio.run(engine.generate([1] * 5, GREEDY, (), 4))
    with pytest.raises(ValueError, match="at least one token"):
        asyncio.run(engine.generate([], GREEDY, (), 1))
    with pytest.raises(ValueError, match="top_p"):
        SamplingOptions(top_p=0.0)
