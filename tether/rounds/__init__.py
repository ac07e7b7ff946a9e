"""Iterated online RLHF, ``tether rlhf``: rounds of sample -> label -> reward model -> PPO
(tether.rounds.pipeline)."""
