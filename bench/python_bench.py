"""The Python package against Python onnxruntime on the same CNN, in the same process:
batch-1 call time, batch-64 throughput, and 8 Python threads at batch 1.

Run from bench/python_bench.sh (which builds and installs the wheel). Prints ratios against
onnxruntime measured in the same run, rounds interleaved (the machine is shared and noisy)."""
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import infera

MODEL = Path(__file__).resolve().parents[1] / "examples/model_repository/fashion_mnist/1/model.onnx"
ROUNDS = 5


def timed(fn, seconds=1.0):
    """Calls per second of fn over about `seconds`."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def threaded(fn, threads=8, seconds=2.0):
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(k):
        while time.perf_counter() < stop:
            fn()
            counts[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main():
    opts = ort.SessionOptions()
    # The same threads as infera's session: its repository gives the model's instances the
    # machine's cores (2 here).
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])
    model = infera.Repository().model("fashion_mnist")
    rng = np.random.default_rng(0)
    x1 = (rng.random((1, 1, 28, 28)) * 255).astype(np.float32)
    x64 = (rng.random((64, 1, 28, 28)) * 255).astype(np.float32)
    np.testing.assert_allclose(model.infer({"input": x64})["logits"], sess.run(None, {"input": x64})[0], rtol=1e-5, atol=1e-5)

    cases = {
        "batch 1, calls/s": (lambda: sess.run(None, {"input": x1}), lambda: model.infer({"input": x1}), timed),
        "batch 64, images/s": (lambda: sess.run(None, {"input": x64}), lambda: model.infer({"input": x64}), timed),
        "8 threads batch 1, calls/s": (lambda: sess.run(None, {"input": x1}), lambda: model.infer({"input": x1}), threaded),
    }
    print(f"{'case':28} {'onnxruntime':>12} {'infera':>12} {'ratio':>7}  (median of {ROUNDS} interleaved rounds)")
    for name, (ref, ours, how) in cases.items():
        scale = 64 if "64" in name else 1
        r, o = [], []
        for _ in range(ROUNDS):
            r.append(how(ref) * scale)
            o.append(how(ours) * scale)
        rm, om = statistics.median(r), statistics.median(o)
        print(f"{name:28} {rm:12.0f} {om:12.0f} {om / rm:7.2f}")
    print("ratio = infera / onnxruntime (higher is better; for batch 1 the call-time ratio is its inverse)")


if __name__ == "__main__":
    main()
