"""Export of one network to deployment formats, each checked against PyTorch before it is kept.

Formats:

* ``onnx``: ``model.onnx``, written by PyTorch's ``torch.export``-based ONNX exporter (the current
  one; ``dynamo=True``) with a dynamic batch dimension, opset ``opset`` (default 18), input
  ``images`` and output ``logits``, and the architecture in the model's metadata. Checked in
  onnxruntime (the ``export`` extra: ``pip install "fairnas[export]"``).
* ``pt2``: ``model.pt2``, a ``torch.export`` program (``torch.export.load(path).module()``), the
  format that replaces TorchScript (``torch.jit`` is deprecated in the PyTorch this project pins)
  for ExecuTorch, AOTInductor and C++ deployment. Checked after loading it back.

The check: a fixed batch (seeded standard-normal images, ``check_batch`` of them) and a batch of
one (the dynamic batch dimension) go through the exported file and through the PyTorch network;
the export passes when, on both, ``max |exported - torch| <= atol + rtol * max |torch|`` over the
logits, and the arg-max classes agree. The numbers are printed and saved in ``export_check.json``
beside the files. Files are written to a staging folder and moved into place only after every
format passed; a failed export or check leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fairnas.deploy.network import Deployable
from fairnas.errors import ConfigError, ExportError
from fairnas.utils import write_json_atomic

log = logging.getLogger("fairnas")

FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}
CHECK_FILE = "export_check.json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def onnxruntime_module() -> Any:
    """onnxruntime, or a clear error saying how to install it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            f"ONNX export and onnxruntime latency need the export extra ({err.name} is not installed): "
            "pip install 'fairnas[export]' (make setup installs it), or use formats=[pt2] / runtime=torch"
        ) from None
    return onnxruntime


def check_inputs(input_shape: Sequence[int], batch_size: int, seed: int) -> list[Tensor]:
    """The fixed check batches: ``batch_size`` seeded standard-normal images, and the first of them alone."""
    if type(batch_size) is not int or batch_size < 2:
        raise ConfigError(
            f"check.batch_size must be a whole number >= 2 (a batch of 1 is checked too), got {batch_size!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_shape, generator=generator)
    return [x, x[:1].clone()]


def to_onnx(net: torch.nn.Module, example: Tensor, opset: int) -> bytes:
    """The ONNX model of ``net`` (dynamic batch), serialised; export errors become one :class:`ExportError`."""
    onnxruntime_module()  # onnx and onnxscript come with it
    for name in ("onnx_ir", "onnxscript"):  # their graph passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), torch.no_grad():
            program = torch.onnx.export(
                net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False,
            )  # fmt: skip
    except Exception as err:
        raise ExportError(
            f"PyTorch could not export the network to ONNX opset {opset}: {_onnx_failure(err)}. A block uses an "
            "operator the ONNX exporter cannot translate: use another operator in the block, another opset=..., "
            "or formats=[pt2]"
        ) from None
    return program.model_proto.SerializeToString()


def onnx_session(model: bytes | str, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime session of ``model``; a graph the runtime cannot run is one :class:`ExportError`."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    if provider not in ort.get_available_providers():
        raise ConfigError(
            f"onnxruntime {ort.__version__} here has no {provider} ({ort.get_available_providers()}): "
            "install onnxruntime-gpu for device=cuda, or use device=cpu"
        )
    try:
        return ort.InferenceSession(model, options, providers=[provider])
    except Exception as err:
        raise ExportError(
            f"onnxruntime {ort.__version__} cannot run the exported graph ({type(err).__name__}: {_first_lines(err)}). "
            "It uses an operator (or an operator version) this runtime lacks: try another opset=..., a newer "
            "onnxruntime, or formats=[pt2]"
        ) from None


def export_network(
    deployable: Deployable,
    out_dir: str | Path,
    formats: Sequence[str] = ("onnx", "pt2"),
    opset: int = 18,
    check_batch: int = 8,
    check_seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Writes ``deployable`` in each of ``formats`` to ``out_dir``, each checked, and returns the check report.

    Raises:
        ConfigError: An unknown format, a bad tolerance, or the extra missing for ONNX.
        ExportError: The export failed, the runtime cannot run it, or its outputs differ from PyTorch's
            beyond the tolerance (the report's numbers are in the message). Nothing is written then.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FILES]
    if unknown or not formats:
        raise ConfigError(f"formats={formats}: give one or more of {sorted(FILES)}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"check.{name} must be a number >= 0, got {value!r}")
    net = deployable.net.eval()
    inputs = check_inputs(deployable.input_shape, check_batch, check_seed)
    with torch.no_grad():
        expected = [net(x) for x in inputs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".export-staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        checks = {}
        for fmt in formats:
            path = staging / FILES[fmt]
            outputs, runtime = _write_and_run(fmt, deployable, inputs, path, opset)
            checks[fmt] = {
                "file": FILES[fmt],
                "bytes": path.stat().st_size,
                "sha256_16": _digest(path),
                "runtime": runtime,
                **_compare(outputs, expected, rtol, atol),
            }
        failed = {f: c for f, c in checks.items() if not c["passed"]}
        if failed:
            detail = "; ".join(
                f"{f}: max |difference| {c['max_abs_diff']:.3g} > {c['allowed_abs_diff']:.3g}, classes agree "
                f"{c['top1_agreement']:.0%}" for f, c in failed.items()
            )  # fmt: skip
            raise ExportError(
                f"the export does not compute what the PyTorch network does ({detail}; rtol={rtol}, atol={atol}). "
                f"Nothing was written to {out_dir}. A block behaves differently in the runtime: report it with "
                "this message"
            )
        for fmt in formats:
            os.replace(staging / FILES[fmt], out_dir / FILES[fmt])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = {
        "passed": True,
        "network": {
            "search_space": deployable.space.name,
            "arch": deployable.arch,
            "blocks": " ".join(deployable.space.describe_arch(deployable.space.parse_arch(deployable.arch))),
            "source": deployable.source,
            "input": {"name": INPUT_NAME, "shape": ["batch", *deployable.input_shape], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", deployable.num_classes]},
            **deployable.info,
        },
        "check": {
            "inputs": f"torch.randn({check_batch}, {', '.join(map(str, deployable.input_shape))}) with seed "
            f"{check_seed}, and its first image alone",
            "rule": "max|exported - torch| <= atol + rtol * max|torch| on every check batch, and equal arg-max "
            "classes where the top two logits differ by more than twice that",
            "rtol": rtol,
            "atol": atol,
            "opset": opset if "onnx" in formats else None,
        },
        "formats": checks,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    write_json_atomic(out_dir / CHECK_FILE, report)
    return report


def _write_and_run(fmt: str, d: Deployable, inputs: list[Tensor], path: Path, opset: int) -> tuple[list[Tensor], str]:
    """Writes one format to ``path``, loads it back as a deployment would, and runs the check inputs."""
    if fmt == "onnx":
        import onnx

        model = onnx.load_from_string(to_onnx(d.net, inputs[0], opset))
        meta = {"fairnas.search_space": d.space.name, "fairnas.arch": d.arch, "fairnas.source": d.source,
                "fairnas.input_shape": "x".join(map(str, d.input_shape))}  # fmt: skip
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        session = onnx_session(str(path))
        outputs = [torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]) for x in inputs]
        return outputs, f"onnxruntime {onnxruntime_module().__version__} (CPUExecutionProvider)"
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with torch.no_grad():
            program = torch.export.export(d.net, (inputs[0],), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise ExportError(
            f"torch.export could not capture the network ({type(err).__name__}: {_first_lines(err)}): a block's "
            "forward is not traceable; use formats=[onnx] or make the block export-friendly"
        ) from None
    torch.export.save(program, str(path))
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        outputs = [module(x) for x in inputs]
    return outputs, f"torch {torch.__version__} (torch.export.load)"


def _compare(outputs: list[Tensor], expected: list[Tensor], rtol: float, atol: float) -> dict[str, Any]:
    """The worst difference over the check batches, what the tolerance allows, and the class agreement."""
    diff = max(float((o.float() - e).abs().max()) for o, e in zip(outputs, expected, strict=True))
    scale = max(float(e.abs().max()) for e in expected)
    allowed = atol + rtol * scale
    shapes_ok = all(o.shape == e.shape for o, e in zip(outputs, expected, strict=True))
    agree = total = 0
    for o, e in zip(outputs, expected, strict=True):
        top2 = e.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * allowed  # images whose class no rounding within tolerance can flip
        agree += int((o.argmax(1) == e.argmax(1))[clear].sum()) if shapes_ok else 0
        total += int(clear.sum())
    return {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "allowed_abs_diff": allowed,
        "top1_agreement": agree / total if total else 1.0,
        "passed": shapes_ok and diff <= allowed and agree == total,
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _onnx_failure(err: BaseException) -> str:
    """What the ONNX exporter could not do, from its long report: the operator it has no translation for."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"no ONNX translation of the operator {op.group(1)}"
    summary = text.split("## Exception summary", 1)[-1]
    return f"{type(err).__name__}: {_first_lines(summary)}"


def _first_lines(err: BaseException, n: int = 3) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:n])[:500]
