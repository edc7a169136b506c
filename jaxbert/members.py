"""A run's members: each of its seeds at each point of its sweep, the single runs that one run trains.

A run of one seed and no `sweep` is its own one member and writes into its own folder. Otherwise every member
writes into a folder of its own, with the `config.yaml` of the single run that trains it alone: `<out>/seed<k>/`
for the seeds of a run without a sweep, `<out>/<point>/seed<k>/` with one (`<point>` is `lr=2e-05` or
`lr=2e-05,supcon_weight=0.1`). A sweep trains all its members in one program (`jaxbert.training`); so do the
seeds of a vmapped run. Those members see the batches of the run's `data_seed`, which their configs pin, so
their own runs repeat them.

Plain Python on the config, no JAX: the run folder checks and the suite runner read the members too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxbert.choices import SWEEP_KEYS
from jaxbert.config import Config, TrainConfig, replace, sweep_points


@dataclasses.dataclass(frozen=True)
class Member:
    config: Config  # the single run that trains it alone: its seed, its point's values, its folder
    point: dict[str, float]  # the swept keys' values, dotted keys ({} without a sweep)

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def key(self) -> int | str:
        """Its entry in `train_and_evaluate`'s results: the seed, or with a sweep `<point>/seed<k>`."""
        return f"{point_name(self.point)}/seed{self.seed}" if self.point else self.seed

    @property
    def label(self) -> str:
        """How the log names it: `seed 1`, `lr=2e-05 seed 1`."""
        return f"{point_name(self.point)} seed {self.seed}" if self.point else f"seed {self.seed}"


def data_seed(t: TrainConfig) -> int:
    """The seed of the batch order."""
    return t.seed if t.data_seed is None else t.data_seed


def point_name(point: dict[str, float]) -> str:
    """A sweep point's folder name: `lr=2e-05,supcon_weight=0.1`."""
    return ",".join(f"{SWEEP_KEYS[key]}={value:g}" for key, value in point.items())


def members(config: Config) -> list[Member]:
    """Every member of the run of `config`, point by point (`config.sweep_points`), seed by seed within a point.

    Members trained in one program (a sweep, vmapped seeds) pin their batch order to the run's (`data_seed`);
    seeds trained one after another leave it to each seed.
    """
    t = config.train
    if len(t.seed_list) == 1 and not config.sweep:
        return [Member(config, {})]
    pinned = t.vmap_seeds or bool(config.sweep)
    found = []
    for point in sweep_points(config):
        folder = Path(config.out) / point_name(point) if point else Path(config.out)
        for seed in t.seed_list:
            single = replace(config, {**point, "sweep": {}, "out": str(folder / f"seed{seed}"), "train.seed": seed,
                                      "train.seeds": 1, "train.vmap_seeds": False,
                                      "train.data_seed": data_seed(t) if pinned else t.data_seed})
            found.append(Member(single, point))
    return found


def in_one_program(config: Config) -> bool:
    """Whether the run trains its members in one program: one member, vmapped seeds, or a sweep."""
    return len(config.train.seed_list) == 1 or config.train.vmap_seeds or bool(config.sweep)


def program_config(config: Config) -> Config:
    """The config the run's program is built from: with a sweep, its first point's (the members share the
    program's structure, which `config` checked; the step reads each member's own values)."""
    return replace(config, {**sweep_points(config)[0], "sweep": {}}) if config.sweep else config
