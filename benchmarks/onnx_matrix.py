"""The figures of docs/onnx-operators.md's architecture matrix (not a timing benchmark):
twin vs onnxruntime, finite differences through onnxruntime, autograd through the source
module; scikit-learn exports; INT8 models under fgsm / pgd. About a minute on one core.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/onnx_matrix.py

The dynamo exporter's rows appear where onnxscript is installed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "models")]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import test_onnx_architectures as arch
    from architectures import ARCHITECTURES, build

    x = np.random.default_rng(1).uniform(0, 1, (4, 3, 12, 12)).astype(np.float32)
    print("| architecture | " + " | ".join(f"opset {o}" for o in arch.OPSETS) + " |")
    for name in sorted(ARCHITECTURES):
        cells = []
        for opset in arch.OPSETS:
            model = arch._exported(name, opset)
            r = arch.check_twin(model, x, "y", rtol=1e-4, atol=2e-5, grad_rtol=1e-2, h=3e-4)
            exact = arch.check_against_torch(model, build(name), x)
            cells.append(f"{r['score_diff']:.1e} / {r['grad_rel_err']:.1e} / {exact:.1e}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        print("\n(dynamo exporter: onnxscript is not installed, skipped)")
    else:
        print("\n| architecture (dynamo exporter) | opset | operators | figures |")
        for name in sorted(ARCHITECTURES):
            model = arch.export_dynamo(build(name))
            r = arch.check_twin(model, x, "y", rtol=1e-4, atol=2e-5, grad_rtol=1e-2, h=3e-4)
            exact = arch.check_against_torch(model, build(name), x)
            opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            ops = ", ".join(sorted({n.op_type for n in model.graph.node}))
            print(f"| {name} | {opset} | {ops} | {r['score_diff']:.1e} / {r['grad_rel_err']:.1e} / {exact:.1e} |")

    print("\n| scikit-learn model | float64 export | float32 export |")
    for kind in ("logistic", "scaled-logistic", "mlp"):
        for classes in (2, 3):
            cells = []
            for dtype, tol in ((np.float64, dict(rtol=1e-10, atol=1e-12, grad_rtol=1e-5, h=1e-5)),
                               (np.float32, dict(rtol=1e-5, atol=1e-6, grad_rtol=1e-2, h=1e-3))):
                model, xs = arch._sklearn(kind, classes, dtype)
                r = arch.check_twin(model, xs, "probabilities", **tol)
                cells.append(f"{r['score_diff']:.1e} / {r['grad_rel_err']:.1e}")
            print(f"| {kind}, {classes} classes | " + " | ".join(cells) + " |")

    from project import gate_session
    from test_quantised import QUANT_CHECKS, build_int8_models

    with tempfile.TemporaryDirectory() as folder:
        built = build_int8_models(Path(folder))
        print("\n| INT8 model | clean | fgsm eps 0.05 | fgsm eps 0.1 | pgd eps 0.1 |")
        for variant in ("float", "qdq", "qdq-per-channel", "qoperator", "dynamic"):
            session = gate_session(Path(folder), f"{variant}.onnx", built["x"], built["y"],
                                   checks=QUANT_CHECKS, extra=f'name = "{variant}"\n')
            results = session.run_all()
            print(f"| {variant} | {results[0].clean_accuracy:.3f} | "
                  + " | ".join(f"{r.accuracy:.3f}" for r in results) + " |")


if __name__ == "__main__":
    main()
