"""What a retrain run tells its reader: the markdown and table artifacts, and the git message.

Pure functions of the run's result dict (built by graft.retrain_flow.retrain), so they are
tested without Prefect and the artifact, reports/retrain.md and the commit message never disagree.
"""

from __future__ import annotations

from typing import Any


def _figure(key: str, value: float | None) -> str:
    """A test figure as people read it: 80.9%, +11.2 pts (gain), 0.977 (ROC-AUC)."""
    if value is None:
        return "n/a"
    if key == "gain":
        return f"{100 * value:+.1f} pts"
    return f"{value:.3f}" if key == "roc_auc" else _pct(value)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric (accuracy, then each class's recall): champion, challenger, change."""
    champ, chall = result.get("champion_score"), result.get("challenger_score")
    if chall is None:
        return []
    rows = [_row("accuracy", champ and champ["accuracy"], chall["accuracy"])]
    classes = sorted(set(chall["recall"]) | set((champ or {}).get("recall", {})))
    for c in classes:
        rows.append(_row(f"recall[{c}]", champ and champ["recall"].get(c), chall["recall"].get(c)))
    return rows


def _row(metric: str, champion: float | None, challenger: float | None) -> dict[str, Any]:
    change = None if champion is None or challenger is None else round(challenger - champion, 4)
    return {"metric": metric,
            "champion": None if champion is None else round(champion, 4),
            "challenger": None if challenger is None else round(challenger, 4),
            "change": change}


def markdown(result: dict[str, Any]) -> str:
    """The run's artifact: status, the change found, the metrics table, the decision and why."""
    lines = [f"# Graft retrain: {result['status']}", ""]
    change = result.get("change", {})
    if change:
        lines += [f"- data: {change['summary']}"]
    if result.get("champion_version"):
        lines += [f"- champion before this run: `{result['champion_version']}`"]
    if result.get("promoted_version"):
        lines += [f"- new champion: `{result['promoted_version']}`"]
    for note in result.get("recovered", []):
        lines += [f"- registry: {note}"]
    rows = table_rows(result)
    if rows:
        lines += ["", "## Champion vs challenger", "",
                  f"Scored on the same {result['challenger_score']['n']} images: "
                  + "; ".join(result.get("evaluation_notes", [])) + ".", "",
                  "| metric | champion | challenger | change |", "|---|---|---|---|"]
        for r in rows:
            delta = "" if r["change"] is None else f"{r['change'] * 100:+.1f} pts"
            lines.append(f"| {r['metric']} | {_pct(r['champion'])} | {_pct(r['challenger'])} "
                         f"| {delta} |")
    if result.get("reasons"):
        lines += ["", "## Decision", ""] + [f"- {reason}" for reason in result["reasons"]]
    lines += next_to_label_lines(result.get("suggestions"))
    if result.get("pipeline_metrics"):
        lines += ["", "## Test figures of this run (metrics/scores.json)", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_figure(k, v)} |" for k, v in result["pipeline_metrics"].items()]
    return "\n".join(lines) + "\n"


def next_to_label_lines(suggestions: dict[str, Any] | None) -> list[str]:
    """The report's "Next images to label" section (graft.lifecycle.retrain.next_to_label)."""
    if not suggestions:
        return []
    lines = ["", "## Next images to label", ""]
    if "rows" not in suggestions:
        return lines + [f"None: {suggestions['note']}"]
    lines += [f"Method `{suggestions['method']}`, best first (all of them: "
              f"{suggestions['file']}):", "", "| rank | image | looks like | why |",
              "|---|---|---|---|"]
    return lines + [f"| {r['rank']} | {r['path']} | {r['predicted']} | {r['reason']} |"
                    for r in suggestions["rows"]]


def commit_message(result: dict[str, Any]) -> str:
    """`git commit -m` text for dvc.lock after a promotion: the version and the gate's numbers."""
    champ, chall = result.get("champion_score"), result["challenger_score"]
    head = f"retrain: promote {result['promoted_version']} (accuracy {_pct(chall['accuracy'])}"
    head += f", was {_pct(champ['accuracy'])})" if champ else ", first champion)"
    return head + "\n\n" + "\n".join(f"- {r}" for r in result.get("reasons", [])) + "\n"
