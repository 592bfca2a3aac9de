"""Inference: from a model and its settings to class ids, probabilities and files.

- `settings`: `InferenceSettings`, what travels with a model besides its weights.
- `ops`: the tensor operations (preprocess, TTA views, probabilities, class ids).
- `predictor`: the `Predictor` facade (paths, PIL images, arrays, batches; faces in photos).
- `files`: predict on files, folders, globs and videos, writing label maps, overlays, part masks, cut-outs.
- `stream`: the inputs as a stream of events (read, parsed in batches, written), stages overlapped in threads.
- `parts`: masks of named classes and cut-outs, grown and feathered for editing.
- `onnx`: export a graph and run it with ONNX Runtime.
"""
