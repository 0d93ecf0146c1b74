"""The accelerator path: the same tap loops, run on-chip (Pallas) or fused by XLA.

``jspatial._accel.dispatch`` picks, per compile target, between the portable loops
(CPU) and these versions (TPU); see ``bench/accel.py`` for what each saves.
"""
