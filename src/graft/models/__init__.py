"""The networks: pretrained backbones behind one front door (backbones.create_model), the heads
fitted on their features (heads), the ensemble and the from-scratch baselines' networks
(ensemble, scratch), the checkpoint file that saves and rebuilds any of them (checkpoint) and
batched forward passes over image files (inference). Imports graft.core and graft.data."""
