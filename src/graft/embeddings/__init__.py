"""The embedding store: pooled features of the frozen backbones by content hash (store), how they
are computed (embed) and the augmented views of labelled images (views). Every stage after
features reads its embeddings here instead of running the backbone again. Imports graft.models,
graft.data and graft.core."""
