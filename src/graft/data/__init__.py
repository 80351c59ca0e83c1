"""The data: image decoding and preprocessing (images), training augmentation (augment), where
images come from (sources), the manifest every stage reads (manifest), how a dataset becomes
data/prepared (prepare) and the rules it must pass (checks). Imports graft.core only."""
