"""From a trained network to an edge device: ONNX export with metadata (onnx_export), INT8 and
FP16 copies (quantize), the export gates (gates), onnxruntime sessions (onnx_model), `graft
predict` (predict), `graft bundle` and its standalone template (bundle, bundle_template/), and
`graft bench` (bench, bench_train, bench_report). Imports graft.evaluation and below."""
