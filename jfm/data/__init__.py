"""Built-in datasets: 2-D toy distributions and small images.

Toy sets are pure functions of a PRNG key returning ``[n, 2]`` arrays (``moons``,
``eight_gaussians``, ``checkerboard``, ``circles``, ``spirals``, ``s_curve``,
``swiss_roll``; by name through ``DATASETS`` / ``sample``). Images are batch-first,
channels-last ``[N, H, W, C]`` in ``[-1, 1]``: scikit-learn's bundled ``digits``, CIFAR-10's
binary files (``load_cifar10``), arrays from ``.npz`` files (``load_npz``,
``load_image_npz``, never unpickling), ``uint8`` conversions and PNG grids.
"""

from ._images import (
    digits as digits,
    from_unit_range as from_unit_range,
    load_cifar10 as load_cifar10,
    load_image_npz as load_image_npz,
    load_npz as load_npz,
    save_image_grid as save_image_grid,
    to_unit_range as to_unit_range,
)
from ._toy import (
    DATASETS as DATASETS,
    checkerboard as checkerboard,
    circles as circles,
    eight_gaussians as eight_gaussians,
    moons as moons,
    s_curve as s_curve,
    sample as sample,
    spirals as spirals,
    swiss_roll as swiss_roll,
)
