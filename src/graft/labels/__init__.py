"""Make every label count: which images to label next (`suggest`), which labels look wrong
(`audit`), which test images nearly copy a training image (`duplicates`; the evaluate stage's
figures without them: `leakage`), and the labeling benchmark that measures all three
(`benchmark`, `bench_report`; docs/labels.md).

All of it works on the cached embeddings of the features stage, centred and L2-normalised
(`space`); nothing here trains the shipped model or changes a label. Ranked between deploy and
evaluation: it may use the evaluation statistics and everything below.
"""
