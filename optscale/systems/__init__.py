"""Seed systems built on live sampling: particle filtering (:mod:`~optscale.systems.particle_filter`),
OptPO (:mod:`~optscale.systems.optpo`) and MarkovScale (:mod:`~optscale.systems.markov`).
"""
