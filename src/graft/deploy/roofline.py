"""How close a model runs to what this CPU can do: the graph's FLOPs and the CPU's fp32 peak.

FLOPs: 2 × the multiply-accumulates of every Conv and Gemm/MatMul node, shapes from onnx shape
inference at batch 1 (element-wise ops are not counted: they are memory-bound, not FLOP-bound).

Peak: physical cores × clock × fp32 FLOPs per cycle per core, where FLOPs per cycle = 2 (an FMA
is a multiply and an add) × vector lanes × FMA pipes. Lanes: 16 with AVX-512, 8 with AVX2/FMA,
4 with SSE only. Pipes: 2 on current x86 cores — except that AMD's Zen 4 executes AVX-512 as two
256-bit halves, so AMD with AVX-512 counts 8 lanes × 2 pipes. Clock: the highest the OS reports
(`cpuinfo_max_freq`, else `cpu MHz`, which in a VM is often the base clock, so the peak is a
floor and the % an upper bound); `GRAFT_CPU_GHZ` overrides it with a measured clock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from graft.core.device import physical_cores


def graph_gflops(path: Path | str) -> float:
    """GFLOPs of one image through the ONNX graph at `path`."""
    import numpy as np
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.ClearField("dim_param")
    batch.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes |= {init.name: list(init.dims) for init in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight, out = shapes[node.input[1]], shapes[node.output[0]]  # (Co, Ci/g, kh, kw)
            macs += int(np.prod(out)) * weight[1] * weight[2] * weight[3]
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            macs += int(np.prod(out)) * (a[0] if transposed else a[-1])
    return 2 * macs / 1e9


def cpu_peak() -> dict[str, Any]:
    """This CPU's fp32 peak in GFLOP/s and how it was computed."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    amd = "AuthenticAMD" in info.get("vendor_id", "")
    if "avx512f" in flags:
        lanes, pipes = (8, 2) if amd else (16, 2)
    elif "fma" in flags or "avx2" in flags:
        lanes, pipes = 8, 2
    else:
        lanes, pipes = 4, 2
    ghz, clock_source = _clock_ghz(info)
    cores = physical_cores()
    per_cycle = 2 * lanes * pipes
    return {"gflops": round(cores * ghz * per_cycle, 1), "cores": cores, "ghz": round(ghz, 3),
            "flops_per_cycle": per_cycle,
            "how": f"{cores} cores × {ghz:.2f} GHz ({clock_source}) × {per_cycle} fp32 FLOP/cycle "
                   f"(2 per FMA × {lanes} lanes × {pipes} FMA pipes)"}


def _clock_ghz(info: dict[str, str]) -> tuple[float, str]:
    if os.environ.get("GRAFT_CPU_GHZ"):
        return float(os.environ["GRAFT_CPU_GHZ"]), "GRAFT_CPU_GHZ"
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():
        return int(max_freq.read_text()) / 1e6, "cpuinfo_max_freq"
    if "cpu MHz" in info:
        return float(info["cpu MHz"]) / 1000, "cpu MHz in /proc/cpuinfo"
    return 2.0, "unknown: 2 GHz assumed"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty elsewhere than Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                   first.splitlines()) if k.strip()}
