"""The baseline server for benchmarks/load.py: the notebook's predict loop run per request.

What a first version of this service would be: FastAPI, the weights loaded at start-up, and for each
``POST /predict`` the textbook loop — read the prefix one character per forward call (the warm-up), then
argmax, wrap the token in a tensor, call the model, repeat — in FastAPI's thread pool. It answers the fields
load.py sends and reads (``prefix``, ``num_tokens``), and ``GET /ready``.

    python -m benchmarks.notebook_server --host 127.0.0.1 --port 8001 --weights weights/rnn.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode import notebook_loop  # noqa: E402
from model import load_weights  # noqa: E402


class PredictRequest(BaseModel):
    prefix: str = Field(min_length=1)
    num_tokens: int = 200


def build_app(weights: str) -> FastAPI:
    loaded = load_weights(weights)
    model, vocab = loaded.model, loaded.vocab
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        ids = vocab.encode(request.prefix).tolist()
        state = model.init_state(1)
        with torch.no_grad():
            for token in ids:  # the warm-up: one forward call per character
                logits, state = model(torch.tensor([[token]]), state)
        generated = notebook_loop(model, state, logits[0, 0], request.num_tokens)
        return {"completion": vocab.decode(generated), "num_tokens": len(generated)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--weights", default="weights/rnn.safetensors")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(build_app(args.weights), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
