"""The figures of docs/onnx-operators.md's architecture matrix (not a timing benchmark):
twin vs onnxruntime, finite differences through onnxruntime, autograd through the source
module; scikit-learn exports; INT8 models under fgsm / pgd. About a minute on one core.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/onnx_matrix.py         # every table
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/onnx_matrix.py int8    # INT8 architectures only

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
    """Every table of docs/onnx-operators.md."""
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
        for variant in ("float", "qdq", "qdq-per-channel", "qoperator", "dynamic", "float-softmax",
                        "qdq-softmax"):
            session = gate_session(Path(folder), f"{variant}.onnx", built["x"], built["y"],
                                   checks=QUANT_CHECKS, extra=f'name = "{variant}"\n')
            results = session.run_all()
            print(f"| {variant} | {results[0].clean_accuracy:.3f} | "
                  + " | ".join(f"{r.accuracy:.3f}" for r in results) + " |")
    int8_architectures()


def int8_architectures() -> None:
    """The architectures quantised by onnxruntime: the twin of the graph the session runs
    (as the plugin builds it) against onnxruntime."""
    import onnx
    import onnxruntime as ort
    import torch

    from pytest_advrobust.models.onnx_models import translate_session
    from pytest_advrobust.models.onnx_torch import UnsupportedOperator
    from test_quantised import build_int8_architectures

    with tempfile.TemporaryDirectory() as folder:
        built = build_int8_architectures(Path(folder))
        x = built["x"]
        noisy = np.clip(x + np.random.default_rng(1).uniform(-0.05, 0.05, x.shape), 0, 1).astype(np.float32)
        print("\n| INT8 architecture | static QDQ | dynamic | static QOperator |")
        names = sorted({name for name, _ in built["paths"]})
        for name in names:
            cells = []
            for fmt in ("qdq", "dynamic", "qoperator"):
                path = built["paths"][(name, fmt)]
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                try:
                    translation = translate_session(session, onnx.load(str(path)), ["y"], quantised=True)
                except UnsupportedOperator as exc:
                    cells.append("refused: " + ", ".join(sorted({p[0] for p in exc.problems})))
                    continue
                twin = translation.twin
                worst, rows = 0.0, 0
                for inputs in (x, noisy):
                    with torch.no_grad():
                        got = twin(torch.from_numpy(inputs))[0].numpy()
                    expected = session.run(["y"], {"x": inputs})[0]
                    worst = max(worst, float(np.abs(got - expected).max()))
                    rows += int((~np.isclose(got, expected, rtol=1e-3, atol=1e-4)).any(1).sum())
                fused = sorted({op for op in translation.runtime_operators or () if op.startswith("QLinear")
                                and op not in ("QLinearConv", "QLinearMatMul")})
                how = (f"fusions {', '.join(fused)}" if fused else "as run") if translation.runtime_operators \
                    else "file's nodes (lacks " + ", ".join(sorted({p[0] for p in translation.unfused.problems})) + ")"
                cells.append(f"max diff {worst:.1e}, {rows}/{2 * len(x)} rows off; {how}")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:] == ["int8"]:
        int8_architectures()
        raise SystemExit
    main()
