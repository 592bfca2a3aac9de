"""Applications built on the library and never imported by it: the demo, the experiments, the report,
attention figures, exports (ONNX, pretrained files, the CE7454 submission package) and the bundler of
the submission's standalone ``run.py``."""
