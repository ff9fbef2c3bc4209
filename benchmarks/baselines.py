"""Plain scripts doing the minimal work of each measurement, run as subprocesses so their
imports are counted exactly like the plugin's (``python baselines.py torch|onnx ROOT``).

FGSM over N samples at k eps: one forward + one backward per batch (the forward's scores
are the clean predictions) and one forward per eps, under ``inference_mode``.
ONNX: onnxruntime scores the clean batch and every attacked batch (what ships decides the
accuracy), and the gradient comes from the torch module the graph was exported from: the
cheapest differentiable equivalent an ONNX user has (the plugin builds its twin from the
graph instead).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(kind: str, root: Path, eps: list[float], batch_size: int) -> list[int]:
    import numpy as np
    import torch

    sys.path.insert(0, str(root))
    from benchmodel import build

    model = build()
    model.load_state_dict(torch.load(root.parent / "weights.pt", weights_only=True))
    model.eval().requires_grad_(False)
    session = None
    if kind == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(root.parent / "model.onnx"),
                                       providers=["CPUExecutionProvider"])

    def scores(x: torch.Tensor) -> torch.Tensor:
        if session is None:
            with torch.inference_mode():
                return model(x)
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    with np.load(root / "data.npz") as archive:
        x_all, y_all = archive["x"], archive["y"]
    correct = [0] * (len(eps) + 1)
    for start in range(0, len(y_all), batch_size):
        x = torch.from_numpy(x_all[start:start + batch_size])
        y = torch.from_numpy(y_all[start:start + batch_size])
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        loss = torch.nn.functional.cross_entropy(out, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
        clean = out.detach() if session is None else scores(x)
        correct[0] += int((clean.argmax(1) == y).sum())
        sign = grad.sign()
        for i, e in enumerate(eps):
            correct[i + 1] += int((scores((x + e * sign).clamp_(0, 1)).argmax(1) == y).sum())
    return correct


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))))
