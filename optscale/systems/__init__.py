"""Seed systems built on live sampling: particle filtering (:mod:`~optscale.systems.particle_filter`),
OptPO (:mod:`~optscale.systems.optpo`) and MarkovScale (:mod:`~optscale.systems.markov`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["live_sampler"]


def live_sampler(config: Any) -> Any:
    """The sampler of the live systems (notebooks 07–09): ``sampling.backend`` on ``config``'s
    sampling settings, with the prefix cache on where the backend has one (``llama-cpp``): a
    particle's next step, or a revision of an answer, repeats a long history that the cache
    then evaluates once. Pool generation never uses it (``get_sampler``)."""
    from ..sampling import get_sampler

    extra = {"prefix_cache": True} if config.sampling.backend == "llama-cpp" else {}
    return get_sampler(config.sampling.backend, config.sampling, **extra)
