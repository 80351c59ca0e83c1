"""graft.data.checks: the per-file table the validation rules read."""

from __future__ import annotations

import pandas as pd

from graft.core.layout import Layout
from graft.data.checks import file_table
from tests.fixtures import write_image, write_prepared


def test_file_table_columns(tmp_path):
    layout = Layout(tmp_path / "proj")
    write_prepared(layout, [("a0.png", "a", "train"), ("b0.png", "b", "val")])
    write_image(layout.prepared / "images" / "a0.png", size=(60, 6))  # replaced: 60 wide, 6 high
    df = pd.read_csv(layout.manifest, dtype=str, keep_default_na=False)
    table = file_table(df, layout.prepared, max_pixels=1000)
    assert table["decodes"].tolist() == [True, True]
    assert table["min_side"].tolist() == [6, 16]
    assert not table["dup_across_splits"].any()
    table = file_table(df, layout.prepared, max_pixels=300)  # 60×6 = 360 > 300 ≥ 16×16
    assert table["decodes"].tolist() == [False, True]
    assert "decompression bomb" in table["problem"].iloc[0]
