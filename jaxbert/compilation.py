"""Compiled programs: JAX's persistent compilation cache for a run, and a record of what a block compiled.

A run compiles its train step once per combination of step shapes and its prediction step once per task and
length bucket; on a CPU that is minutes of a short run. With the persistent cache (`train.compilation_cache`),
a second run of the same model and shapes loads those programs from disk instead of compiling them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

import jax

from jaxbert.config import Config
from jaxbert.data import user_cache_dir

# The events `jax.monitoring` reports (jax/_src/dispatch.py, jax/_src/compiler.py, jax/_src/compilation_cache.py).
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # every XLA compilation, a load from the cache too
CACHE_HIT = "/jax/compilation_cache/cache_hits"
CACHE_WRITE = "/jax/compilation_cache/cache_misses"  # reported as a new program is written to the cache


def cache_folder(config: Config) -> str | None:
    """The folder a run of `config` keeps compiled programs in: JAX's own setting when it has one (the
    `JAX_COMPILATION_CACHE_DIR` environment variable, `jax.config`, a suite's shared folder), else the one
    `train.compilation_cache` names (`auto`: the user's cache folder); None for none."""
    configured = jax.config.jax_compilation_cache_dir
    setting = config.train.compilation_cache
    if configured is not None or setting in (None, "off"):
        return configured
    return str(user_cache_dir("xla") if setting == "auto" else Path(setting).expanduser().absolute())


def use_cache(config: Config) -> None:
    """Turns JAX's persistent compilation cache on in `cache_folder(config)`, for every program however fast it
    compiled, unless JAX has a folder already: then its settings are the user's and stay as they are."""
    folder = cache_folder(config)
    if folder is None or jax.config.jax_compilation_cache_dir is not None:
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    # JAX's default threshold (1 s) leaves out the evaluation programs of a small model and every program of a
    # tiny one; loading any of them from disk takes milliseconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@dataclasses.dataclass
class Compiles:
    """What a block compiled (`compile_log`)."""

    programs: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # (jitted function, seconds) each
    cache_hits: int = 0  # programs loaded from the persistent cache (each is in `programs` too, with its load time)
    cache_writes: int = 0  # programs compiled and written to the persistent cache

    def of(self, name: str) -> list[float]:
        """The seconds of each compilation of the jitted function `name`."""
        return [seconds for fun, seconds in self.programs if fun == f"jit({name})"]


@contextlib.contextmanager
def compile_log() -> Iterator[Compiles]:
    """Records every XLA compilation in the block, through JAX's public monitoring events."""
    compiles = Compiles()

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            compiles.programs.append((kwargs.get("fun_name", ""), seconds))

    def on_event(event: str, **kwargs) -> None:
        compiles.cache_hits += event == CACHE_HIT
        compiles.cache_writes += event == CACHE_WRITE

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
