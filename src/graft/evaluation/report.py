"""What the evaluation says in words: reports/evaluate.md, the lines `graft evaluate` and
`graft summary` print, and the `graft rank` table. Pure functions of the metrics dicts."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, ci: list[float | None] | None = None, percent: bool = True) -> str:
    """A figure with its interval: '78.4% [76.6, 80.2]' (percent) or '0.975 [0.970, 0.980]'."""
    if value is None:
        return "n/a"
    scale, digits, unit = (100, 1, "%") if percent else (1, 3, "")
    text = f"{scale * value:.{digits}f}{unit}"
    if ci and None not in ci:
        text += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return text


def _auc(value: float | None, ci: list[float | None] | None = None) -> str:
    """ROC-AUC as a number; 'n/a' when undefined."""
    return _fmt(value, ci, percent=False)


MIN_TEST_IMAGES = 100  # below this, one image moves accuracy by more than a point
MIN_VAL_PER_CLASS = 5  # below this, choices made on val (C, epochs, strategy) are near guesses


def split_warnings(m: dict[str, Any]) -> list[str]:
    """Why a figure may mean little: too few test images, too few validation images."""
    out = []
    n_test, n_val, k = m["n_test"], m.get("n_val"), len(m["class_names"])
    if n_test < MIN_TEST_IMAGES:
        out.append(f"only {n_test} test images: one image moves accuracy by "
                   f"{100 / n_test:.1f} points, so these figures mean little (add images, or "
                   "raise ingest.test_fraction)")
    if n_val is not None and n_val < MIN_VAL_PER_CLASS * k:
        out.append(f"only {n_val} validation images for {k} classes: what was chosen on them "
                   "(C, epochs, strategy) is close to a guess (add images, or raise "
                   "ingest.val_per_class / ingest.val_fraction)")
    return out


def verdict(m: dict[str, Any]) -> str:
    if m["best_baseline"] is None:
        return "no baseline was scored"
    points, best = 100 * abs(m["transfer_gain"]), m["best_baseline"]
    lo, hi = m["transfer_gain_ci"]
    unsure = lo is not None and lo <= 0 <= hi
    caveat = " (within noise: the paired 95% interval includes 0)" if unsure else ""
    if m["negative_transfer"]:
        return (f"NEGATIVE TRANSFER — the best baseline ({best}) beats the transferred model "
                f"by {points:.1f} points{caveat}")
    if m["transfer_gain"] == 0:
        return f"no gain: the transferred model ties with the best baseline ({best})"
    return f"transfer helped: +{points:.1f} points over the best baseline ({best}){caveat}"


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """metrics/scores.json: the few test figures `dvc metrics show` prints (the full set stays in
    metrics/evaluate.json), each readable at 100 columns."""
    out = {"accuracy": m["accuracy"]}  # macro-F1, ROC-AUC: metrics/evaluate.json, evaluate.md
    if m["best_baseline"] is not None:
        out["baseline"] = m["baselines"][m["best_baseline"]]
        out["gain"] = m["transfer_gain"]
    return {key: None if value is None else round(value, 4) for key, value in out.items()}


def report_markdown(m: dict[str, Any]) -> str:
    """reports/evaluate.md: the model and the baselines with 95% intervals, gain and verdict."""
    lines = [
        "# Evaluation on the test split",
        "",
        f"{m['n_test']} test images, {len(m['class_names'])} classes; "
        "95% bootstrap intervals in brackets.",
        "",
        *[f"> **Warning:** {w}.\n" for w in split_warnings(m)],
        "| Contender | Accuracy | Macro-F1 | ROC-AUC (OvR) |",
        "|---|---|---|---|",
        f"| transferred model | {_fmt(m['accuracy'], m['accuracy_ci'])} | "
        f"{_fmt(m['macro_f1'], m['macro_f1_ci'])} | {_auc(m['roc_auc'], m['roc_auc_ci'])} |",
    ]
    for name, acc in m["baselines"].items():
        scores = m.get("baselines_scores", {}).get(name, {})
        lines.append(f"| baseline: {name} | {_fmt(acc, m['baselines_ci'][name])} | "
                     f"{_fmt(scores.get('macro_f1'))} | {_auc(scores.get('roc_auc'))} |")
    gain = m["transfer_gain"]
    if gain is not None:
        lo, hi = m["transfer_gain_ci"]
        ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if None not in (lo, hi) else ""
        lines += ["", f"Transfer gain: {100 * gain:+.1f} points{ci} (paired bootstrap)."]
    if m.get("test_near_copies") is not None:
        lines += ["", near_copies_line(m) + " (reports/near_duplicates.csv)."]
    lines += ["", f"**Verdict: {verdict(m)}.**", ""]
    if m.get("deployed") == "baseline":
        lines += [f"**Deployed: the {m['best_baseline']} baseline, not the transferred model.** "
                  "evaluate.on_negative_transfer is use_baseline, so the export stage publishes "
                  "models/baseline.pt (trained from scratch on the same images) as "
                  "models/model.onnx.", ""]
    return "\n".join(lines)


def near_copies_line(m: dict[str, Any]) -> str:
    """The model's accuracy without the test images that nearly copy a training image."""
    n = m["test_near_copies"]
    if n == 0:
        return "No test image nearly copies a training or validation image (audit stage)"
    accuracy = _fmt(m["accuracy_without_near_copies"], m["accuracy_without_near_copies_ci"])
    return (f"Without the {n} test image(s) that nearly copy a training or validation image: "
            f"accuracy {accuracy} on {m['n_test_without_near_copies']} images")


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What the CLI prints after the stage; a loud WARNING line on negative transfer."""
    m = metrics
    lines = [
        f"test images: {m['n_test']}",
        *[f"WARNING: {w}" for w in split_warnings(m)],
        f"model accuracy {_fmt(m['accuracy'], m['accuracy_ci'])}, "
        f"macro-F1 {_fmt(m['macro_f1'], m['macro_f1_ci'])}, "
        f"ROC-AUC {_auc(m['roc_auc'], m['roc_auc_ci'])}",
    ]
    if m.get("test_near_copies"):
        lines.append(near_copies_line(m))
    for name, acc in m["baselines"].items():
        lines.append(f"baseline {name}: accuracy {_fmt(acc, m['baselines_ci'][name])}")
    if m["negative_transfer"]:
        lines.append(f"WARNING: {verdict(m)}")
    else:
        lines.append(verdict(m))
    if m.get("deployed") == "baseline":
        lines.append(f"DEPLOYING THE BASELINE: export will publish {m['best_baseline']} "
                     "(models/baseline.pt), not the transferred model (on_negative_transfer: "
                     "use_baseline)")
    return lines


def rank_table(result: dict) -> str:
    """The ranking as a markdown table, best LogME first."""
    lines = ["| rank | backbone | size | LogME | H-score |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {r['backbone']} | {r['image_size']} | {r['logme']:.4f} | "
              f"{r['h_score']:.2f} |" for i, r in enumerate(result["ranking"], 1)]
    return "\n".join(lines)
