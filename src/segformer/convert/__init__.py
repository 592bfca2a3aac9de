"""Weight converters: pure state_dict -> state_dict functions between our key names and others'.

- `hf`: HF transformers' SegFormer (legacy and 5.x key names) and its ``config.json``;
- `original`: NVlabs/mmseg checkpoints, and the architecture inferred from their tensor shapes;
- `keymap`: the declarative two-way key tables both are written with.

Reading and writing checkpoint files (`segformer.load`, `segformer.save`) lives in `segformer.checkpoint`.
"""

from .hf import config_from_hf, config_to_hf, hf_to_native, native_to_hf
from .original import infer_config, native_to_original, original_to_native

__all__ = [
    "config_from_hf",
    "config_to_hf",
    "hf_to_native",
    "infer_config",
    "native_to_hf",
    "native_to_original",
    "original_to_native",
]
