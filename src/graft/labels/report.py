"""What the labels room says in words: reports/audit.md, the lines `graft audit` and
`graft suggest` print, and the audit stage's stop message. Pure functions of tables and metrics.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

SHOW = 10  # rows of each table in audit.md and on the console; the CSV files hold them all


class AuditError(ValueError):
    """A finding that `audit.on_label_issues` / `audit.on_near_duplicates` says stops the
    pipeline (the reports are written first)."""


def audit_metrics(issues: pd.DataFrame, pairs: pd.DataFrame, info: dict, n_labelled: int,
                  n_scored: int) -> dict[str, Any]:
    """metrics/audit.json's figures (the stage adds its params and seconds)."""
    by_split = pairs.groupby(["split_a", "split_b"]).size()
    test = pairs.loc[pairs["split_a"] == "test"]
    return {
        "n_labelled": n_labelled,
        "n_label_scored": n_scored,  # classes of a single image are not scored
        "label_issues": len(issues),
        "near_duplicates": len(pairs),
        "near_duplicates_by_splits": {f"{a}-{b}": int(n) for (a, b), n in by_split.items()},
        "exact_duplicates": int((pairs["similarity"] >= 1.0).sum()),
        "test_near_copies": int(test["path_a"].nunique()),
        "near_duplicate_check": info,
    }


def findings(m: dict[str, Any]) -> list[str]:
    """One sentence per kind of finding, empty when there is none."""
    out = []
    if m["label_issues"]:
        out.append(f"{m['label_issues']} of {m['n_label_scored']} labelled images sit closer to "
                   "another class's images than to their own: check their labels")
    if m["near_duplicates"]:
        out.append(f"{m['near_duplicates']} image pair(s) across splits are (near-)copies, "
                   f"{m['test_near_copies']} test image(s) nearly copy a training or validation "
                   "image: evaluate reports accuracy with and without them")
    return out


def console_lines(m: dict[str, Any]) -> list[str]:
    """What `graft audit` prints: the counts, then a WARNING line per finding."""
    check = m["near_duplicate_check"]
    calibration = check.get("calibration")
    threshold = (f"thumbnail threshold {calibration['threshold']:.4f} (q05 {calibration['q05']:.4f}"
                 f" of {calibration['n']} re-encoded copies)" if calibration
                 else "content hashes only")
    lines = [f"audited {m['n_labelled']} labelled images: {m['label_issues']} suspected label "
             f"error(s); {m['near_duplicates']} near-duplicate pair(s) across splits "
             f"({threshold})"]
    if check["too_small"]:
        lines.append(f"{check['too_small']} image(s) under {check['min_side']} px compared by "
                     "content hash only")
    return lines + [f"WARNING: {f}" for f in findings(m)]


def stop_message(m: dict[str, Any], on_issues: str, on_duplicates: str, where: str) -> str | None:
    """The AuditError message when a finding is set to `fail`, else None."""
    stops = []
    if on_issues == "fail" and m["label_issues"]:
        stops.append(f"{m['label_issues']} suspected label error(s) (audit.on_label_issues)")
    if on_duplicates == "fail" and m["near_duplicates"]:
        stops.append(f"{m['near_duplicates']} near-duplicate pair(s) across splits "
                     "(audit.on_near_duplicates)")
    if not stops:
        return None
    return (f"{where}: audit found {' and '.join(stops)}; fix the data, or set the key to "
            "'warn' to continue")


def markdown(m: dict[str, Any], issues: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """reports/audit.md: the counts, then the top of each table."""
    lines = ["# Label audit", "", *[f"- {line}" for line in console_lines(m)], "",
             f"## Suspected label errors ({len(issues)}, reports/label_issues.csv)", "",
             "score = cosine to its own class's mean (itself left out) − cosine to the nearest "
             "other class's mean; most negative first.", ""]
    lines += _table(issues, ["path", "label", "suggested", "score"])
    lines += ["", f"## Near-duplicates across splits ({len(pairs)}, reports/near_duplicates.csv)",
              "", "similarity = thumbnail correlation (1 = same content).", ""]
    lines += _table(pairs, ["path_a", "split_a", "path_b", "split_b", "similarity"])
    return "\n".join(lines) + "\n"


def _table(df: pd.DataFrame, columns: list[str]) -> list[str]:
    if df.empty:
        return ["None found."]
    rows = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    rows += ["| " + " | ".join(str(v) for v in r) + " |"
             for r in df[columns].head(SHOW).itertuples(index=False)]
    if len(df) > SHOW:
        rows.append(f"\n… and {len(df) - SHOW} more in the CSV file.")
    return rows


def suggestion_lines(method: str, table: pd.DataFrame, where: str) -> list[str]:
    """What `graft suggest` prints: the method, the top of the ranking, where the rest is."""
    lines = [f"method: {method}; {len(table)} image(s) to label next, best first "
             f"(all in {where}):"]
    for r in table.head(SHOW).itertuples(index=False):
        guess = f" [looks like {r.predicted}]" if r.predicted else ""
        lines.append(f"{r.rank:>3}. {r.path}{guess}: {r.reason}")
    return lines
