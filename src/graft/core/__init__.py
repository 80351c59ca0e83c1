"""The ground floor: params (config), every project path (layout), atomic files and hashes
(files), the device / precision / thread policy (device) and the torchrun world (distributed).
Imports nothing else of Graft.

VERSION is Graft's version (graft.__version__), here so that the rooms that write it into their
files (checkpoints, ONNX metadata, bench reports) need not import the package's face."""

VERSION = "0.1.0"
