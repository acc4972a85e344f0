"""From a found architecture to deployment: the network of a checkpoint, its checked export, latency tables.

* :mod:`fairnas.deploy.network`: the network a checkpoint holds (stand-alone run), or one path of a
  supernet with its BN statistics recalibrated as the search does.
* :mod:`fairnas.deploy.export`: ONNX and ``torch.export`` files, each checked against PyTorch.
* :mod:`fairnas.deploy.latency`: per-block latency tables measured on a target device, and the
  predicted latency of any architecture that ``search.py latency_table=...`` optimises.

onnx and onnxruntime are the ``export`` extra; nothing here imports them until it needs them.
"""

from fairnas.deploy.latency import LatencyTable, build_table, make_runtime, validate_table
from fairnas.deploy.network import Deployable, network_from_checkpoint

__all__ = ["Deployable", "LatencyTable", "build_table", "make_runtime", "network_from_checkpoint", "validate_table"]
