"""fairnas: fair weight-sharing neural architecture search (FairNAS) with PyTorch Lightning and Hydra.

Packages: ``models`` (search spaces, supernet, export, costs, BN recalibration), ``samplers``
(which paths a step trains), ``system`` (the Lightning systems and the fair step), ``data``
(datamodules), ``callbacks`` (fairness telemetry).
"""

__version__ = "0.1.0"
