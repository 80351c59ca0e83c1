"""Stage `audit`: suspected label errors and near-duplicates across splits, before training.

Reads data/prepared (manifest + images, for thumbnails) and the embedding store the features
stage filled; writes reports/label_issues.csv (path,label,suggested,score), reports/
near_duplicates.csv (path_a,split_a,path_b,split_b,similarity), reports/audit.md and
metrics/audit.json. Paths are where ingest found each image. `audit.on_label_issues` and
`audit.on_near_duplicates` say whether a finding warns or stops the pipeline (AuditError, after
every output is written), so `dvc repro` stops before finetune. The evaluate stage reads
near_duplicates.csv to score the test split with and without its near-copies.
"""

from __future__ import annotations

import time

from graft.core.config import Params
from graft.core.files import write_csv, write_json, write_text
from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, labelled, origins
from graft.embeddings.store import check_params as check_features
from graft.labels import audit, duplicates, report
from graft.labels.space import project_space


def run(params: Params, layout: Layout) -> dict:
    """Audit the labelled images; write the reports and metrics; raise AuditError when a finding
    is set to fail."""
    started = time.perf_counter()
    a = params.audit
    check_features(params.features, str(layout.params))
    space = project_space(params, layout)
    paths = origins(space.rows, layout.manifest)
    files = absolute_paths(space.rows, layout.manifest)
    scores = audit.label_scores(space, paths)
    issues = audit.label_issues(scores, a.label_margin)
    pairs, info = duplicates.near_duplicates(space, paths, files, a,
                                             params.validate.max_pixels)
    write_csv(layout.label_issues, audit.COLUMNS, issues.itertuples(index=False))
    write_csv(layout.near_duplicates, duplicates.COLUMNS, pairs.itertuples(index=False))
    metrics = report.audit_metrics(issues, pairs, info, len(labelled(space.rows)),
                                   int(scores["score"].notna().sum()))
    metrics |= {"label_margin": a.label_margin, "on_label_issues": a.on_label_issues,
                "on_near_duplicates": a.on_near_duplicates,
                "seconds": round(time.perf_counter() - started, 2)}
    write_text(layout.report("audit.md"), report.markdown(metrics, issues, pairs))
    write_json(layout.metrics("audit"), metrics)
    stop = report.stop_message(metrics, a.on_label_issues, a.on_near_duplicates,
                               str(layout.report("audit.md")))
    if stop:
        raise report.AuditError(stop)
    return metrics
