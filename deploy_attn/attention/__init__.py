"""The attention zoo: one file per paper; importing this package registers them all."""
from . import (  # noqa: F401
    bam, cbam, coord, cpca, danet, eca, ema, emax, gc, mhsa, nonlocal_, scsa, se, shuffle, sk,
)
