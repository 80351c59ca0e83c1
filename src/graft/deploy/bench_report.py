"""`graft bench`'s tables: the inference and the training figures as markdown, with the machine
they were taken on. Pure functions of the reports graft.deploy.bench and bench_train return."""

from __future__ import annotations

from typing import Any


def markdown(report: dict[str, Any]) -> str:
    """The inference table as markdown, with the ratios and the skipped rows underneath."""
    m = report["machine"]
    lines = [f"{report['backbone']} at {report['image_size']} px, {report['threads']} threads, "
             f"{m['gpu'] or m['cpu']} (load {m['load_average_1min_before']})", "",
             "| runtime | p50 ms (batch 1) | p95 ms (batch 1) | img/s (batch "
             f"{report['rows'][0]['batch_size'] if report['rows'] else '-'}) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['runtime']} | {r['p50_ms_batch1']} | {r['p95_ms_batch1']} | "
              f"{r['images_per_s']} |" for r in report["rows"]]
    lines += [""] + [f"{k}: {v}×" for k, v in report["ratios"].items()]
    roof = report.get("roofline")
    if roof:
        lines.append(f"onnxruntime fp32: {roof['fp32_gflops']} GFLOP/s "
                     f"({roof['gflop_per_image']} GFLOP/image) = "
                     f"{roof['fp32_percent_of_peak']}% of this CPU's fp32 peak of "
                     f"{roof['peak']['gflops']} GFLOP/s = {roof['peak']['how']}")
    lines += [f"skipped {k}: {v}" for k, v in report["skipped"].items()]
    return "\n".join(lines)


def markdown_train(report: dict[str, Any]) -> str:
    """The training table as markdown, with the machine underneath."""
    m = report["machine"]
    lines = [f"{report['backbone']} training at {report['image_size']} px "
             f"({m['gpu'] or m['cpu']}, load {m['load_average_1min_before']})", "",
             "| config | device | batch | img/s |", "|---|---|---:|---:|"]
    lines += [f"| {r['config']} | {r['device']} | {r['batch_size']} | {r['images_per_s']} |"
              for r in report["rows"]]
    lines += [""] + [f"skipped {s}" for s in report["skipped"]]
    return "\n".join(lines)
