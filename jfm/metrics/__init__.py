r"""Sample-quality metrics.

Distances between two sample sets ``[N, *event]`` and ``[M, *event]``:
:func:`energy_distance`, :func:`mmd` and the exact :func:`w2`. Metrics of sampled
trajectories ``[T, N, *event]``: :func:`path_energy`, :func:`normalized_path_energy` and
:func:`straightness`.
"""

from ._samples import energy_distance as energy_distance, mmd as mmd, w2 as w2
from ._trajectory import (
    normalized_path_energy as normalized_path_energy,
    path_energy as path_energy,
    straightness as straightness,
)
