"""`segformer serve`: an HTTP API and a web page over a `segformer.Predictor`.

FastAPI under uvicorn (the ``serve`` extra: ``pip install "segformer[serve]"``). The same Predictor the
command line uses answers ``POST /v1/parse``, so a label map over HTTP is byte for byte the one
`segformer predict` writes. Modules: `app` (routes, limits, errors), `batcher` (the model thread and
its bounded queue), `uploads` (reading and checking images), `model` (parsing and encoding answers),
`server` (uvicorn, signals). The page is ``static/``, served from memory.

>>> app = segformer.serve.create_app(segformer.Predictor("microsegformer-celebamask"))
>>> segformer.serve.serve(predictor, ServeConfig(port=0))   # blocks until Ctrl-C / SIGTERM
"""

from __future__ import annotations

from pathlib import Path

from .app import TOKEN_ENV, ServeConfig, create_app
from .server import serve


def model_card(model: str | Path) -> str | None:
    """The model card of a pretrained tag, or of a local model (`segformer.checkpoint.card.find_card`:
    ``NAME.md`` beside a file, ``README.md`` in a folder), else None."""
    from ..checkpoint.card import find_card
    from ..pretrained import PRETRAINED, is_tag, pretrained_dir

    path = pretrained_dir() / PRETRAINED[str(model)].card if is_tag(model) else find_card(model)
    try:
        return path.read_text(encoding="utf-8") if path is not None and path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


__all__ = ["TOKEN_ENV", "ServeConfig", "create_app", "model_card", "serve"]
