"""`deqflow serve` end to end: a real Triton Inference Server (PyTriton) on free 127.0.0.1 ports serving a small
split export; pairs over HTTP and gRPC equal local inference, concurrent clients are batched, streams are
warm-started, bad requests are refused while others are served, and the server stops without leftovers.
The server tests skip when nvidia-pytriton or tritonclient is not installed (pip install deqflow[serve])."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from runtime.serving.models import StreamStore
from runtime.serving.protocol import RequestError, check_pair, error_message

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / SHIPPED_CHECKPOINT
SOLVER = ["--iters", "40", "--tol", "5e-3", "--stop-mode", "rel"]
HAVE_SERVING = all(importlib.util.find_spec(m) is not None for m in ("pytriton", "tritonclient"))
needs_server = pytest.mark.skipif(not HAVE_SERVING, reason="deqflow serve needs nvidia-pytriton and "
                                  "tritonclient[http,grpc] (pip install deqflow[serve]); not installed here")


# ---- pieces that need no server ---------------------------------------------------------------------------


def test_request_checks_give_one_line_reasons():
    good = np.zeros((3, 128, 160), np.float32)
    check_pair(good, good, levels=4)
    cases = {"not a multiple of 8": np.zeros((3, 128, 164), np.float32), "too small": np.zeros((3, 64, 64), np.float32),
             "NaN": np.full((3, 128, 160), np.nan, np.float32), "float32": good.astype(np.float64)}
    for words, bad in cases.items():
        with pytest.raises(RequestError, match=words):
            check_pair(bad, bad if bad.shape == good.shape else bad, levels=4)
    with pytest.raises(RequestError, match="differ in shape"):
        check_pair(good, np.zeros((3, 136, 160), np.float32), levels=4)


def test_error_message_unwraps_pytriton_traceback():
    text = ("Failed to process the request(s) for model 'deqflow_flow_0_0', message: TritonModelException: Model "
            "execute error: Traceback (most recent call last):\n  File \"model.py\", line 492, in execute\n"
            "c_python_backend_utils.TritonModelException: RequestError: image1 contains NaN or Inf pixels\n\nAt:")
    assert error_message(text) == "image1 contains NaN or Inf pixels"


def test_stream_store_expires_idle_streams():
    from runtime.serving.models import Stream

    store = StreamStore(idle_timeout_s=1.0)
    store.put(1, Stream(np.zeros((3, 8, 8), np.float32), None, last_seen=0.0))
    store.put(2, Stream(np.zeros((3, 8, 8), np.float32), None, last_seen=5.0))
    assert store.expire(now=5.5) == 1 and store.get(1) is None and store.get(2) is not None


class FakeRequest:
    """What PyTriton hands the bound function: named arrays (with the batch axis)."""

    def __init__(self, **data):
        self.data = data

    def __getitem__(self, name):
        return self.data[name]


def test_a_bad_request_batched_with_good_ones_gets_its_error_and_they_their_flow():
    from types import SimpleNamespace

    from runtime import InferenceResult
    from runtime.serving.models import FlowModel

    def infer(image1, image2):
        n, _, h, w = image1.shape
        return InferenceResult(flow=np.ones((n, 2, h, w), np.float32), flow_low=None, iterations=3,
                               residual=np.zeros(n, np.float32))

    model = FlowModel.__new__(FlowModel)
    model.backend, model.levels = SimpleNamespace(infer=infer, inputs=[]), 4
    good = np.zeros((1, 3, 128, 160), np.float32)
    out = model([FakeRequest(image1=good, image2=good), FakeRequest(image1=good * np.nan, image2=good),
                 FakeRequest(image1=np.repeat(good, 2, 0), image2=np.repeat(good, 2, 0))])
    assert out[1]["error"][0, 0].decode() == "image1 contains NaN or Inf pixels" and "flow" not in out[1]
    assert out[0]["flow"].shape == (1, 2, 128, 160) and out[2]["flow"].shape == (2, 2, 128, 160)
    assert out[0]["batch"][0, 0] == 3 and out[2]["iterations"].ravel().tolist() == [3, 3]
    with pytest.raises(RequestError, match="NaN"):  # alone, the request gets a Triton error
        model([FakeRequest(image1=good * np.nan, image2=good)])


def test_oversized_requests_and_model_failures_get_one_clean_line():
    from types import SimpleNamespace

    from deqflow.memory_plan import MemoryLimit, ModelDims, PlanRequest, estimate
    from runtime import InferenceResult
    from runtime.serving.models import Admission, FlowModel

    def infer(image1, image2):
        n, _, h, w = image1.shape
        if h == 136:  # a failure inside the model, as a library raises it
            raise RuntimeError('File "/tmp/x/model.py", line 3: DefaultCPUAllocator: can\'t allocate memory: you '
                               'tried to allocate 99999999999 bytes')
        return InferenceResult(flow=np.ones((n, 2, h, w), np.float32), flow_low=None, iterations=3,
                               residual=np.zeros(n, np.float32))

    request = PlanRequest(ModelDims(variant="T", feature_dim=64, hidden_dim=32), 128, 160)
    limit = MemoryLimit(int(estimate(replace(request, height=256, width=320)).total / 0.9) - 1, "test")
    model = FlowModel.__new__(FlowModel)
    model.backend, model.levels = SimpleNamespace(infer=infer, inputs=[]), 4
    model.admission = Admission(request, limit, max_pixels=0)
    good, big, failing = (np.zeros((1, 3, h, w), np.float32) for h, w in ((128, 160), (256, 320), (136, 160)))
    out = model([FakeRequest(image1=good, image2=good), FakeRequest(image1=big, image2=big),
                 FakeRequest(image1=failing, image2=failing)])
    assert out[0]["flow"].shape == (1, 2, 128, 160)
    oversized, failed = out[1]["error"][0, 0].decode(), out[2]["error"][0, 0].decode()
    assert oversized.startswith("frame 256x320 (batch 1) needs about") and "one model instance" in oversized
    assert failed == "the server ran out of memory on this request; send a smaller frame"
    for text in (oversized, failed):
        assert "\n" not in text and "Traceback" not in text and "/tmp/" not in text and ".py" not in text
    model.admission = Admission(max_pixels=128 * 160)
    with pytest.raises(RequestError, match=r"frame 136x160 has 21760 pixels, more than this server admits \(20480"):
        model([FakeRequest(image1=failing, image2=failing)])


def test_own_libpython_goes_first():
    import sysconfig

    from runtime.serving.server import use_own_libpython

    env = {"LD_LIBRARY_PATH": "/somewhere"}
    libdir = use_own_libpython(env)
    assert libdir == sysconfig.get_config_var("LIBDIR")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == libdir and "/somewhere" in env["LD_LIBRARY_PATH"]


@pytest.mark.skipif(HAVE_SERVING, reason="checks the message shown when nvidia-pytriton is missing")
def test_serve_without_pytriton_says_what_to_install(tmp_path):
    done = cli("serve", "--model", str(tmp_path / "m.onnx"))
    assert done.returncode == 2 and "pip install" in done.stderr and "Traceback" not in done.stderr


# ---- a running server ----------------------------------------------------------------------------------------


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deqflow", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    """The shipped checkpoint exported at 128x160 (split layout, dynamic batch), once per test module."""
    out = tmp_path_factory.mktemp("serve-export") / "deqflow-T.onnx"
    done = cli("export", "--checkpoint", str(CHECKPOINT), "--output", str(out), "--layout", "split", "--height",
               "128", "--width", "160", "--dynamic", "--min-shape", "1x128x160", "--opt-shape", "1x128x160",
               "--max-shape", "8x128x160", "--iters", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def frames(count: int = 4) -> list[np.ndarray]:
    """A camera pan over a real photograph: 128x160 crops moving 3 px per frame."""
    import cv2
    from skimage import data

    left = data.stereo_motorcycle()[0]
    small = cv2.resize(left, (left.shape[1] // 3, left.shape[0] // 3), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(small[20:148, 20 + 3 * t:180 + 3 * t]) for t in range(count)]


@pytest.fixture(scope="module")
def local(small_export):
    """Local inference with the server's settings: the reference every served flow must equal."""
    from runtime import FlowEstimator, SolveOverrides, create_backend

    backend = create_backend("onnxruntime", small_export, threads=1,
                             settings=SolveOverrides(max_iter=40, tol=5e-3, stop_mode="rel"))
    video = frames()
    pair = FlowEstimator(backend)(video[0], video[1])
    warm = FlowEstimator(backend, warm_start=True)
    stream = [warm(a, b) for a, b in zip(video, video[1:])]
    backend.close()
    return {"frames": video, "pair": pair, "stream": stream}


@pytest.fixture(scope="module")
def server(small_export):
    from runtime.serving.process import ServerProcess

    proc = ServerProcess(["--model", str(small_export), "--max-batch", "8", "--max-queue-delay-us", "300000",
                          "--threads", "1", "--stream-idle-timeout", "30", "--max-size", "128x160", *SOLVER], root=ROOT,
                         env={"OMP_NUM_THREADS": "1"})
    with proc:
        yield proc


def flow_client(url: str):
    from runtime.serving.client import Client

    return Client(url, timeout_s=300)


@needs_server
@pytest.mark.slow
def test_pairs_over_http_and_grpc_equal_local_inference(server, local):
    for url in (server.http, server.grpc):
        with flow_client(url) as client:
            assert client.ready()
            served = client.pair(local["frames"][0], local["frames"][1])
        assert served.flow.shape == local["pair"].flow.shape
        assert np.abs(served.flow - local["pair"].flow).max() <= 1e-5, url
        assert int(served.iterations[0]) == local["pair"].iterations


@needs_server
@pytest.mark.slow
def test_concurrent_clients_are_batched(server, local):
    results, errors = [], []

    def one(k: int) -> None:
        try:
            with flow_client(server.http if k % 2 else server.grpc) as client:
                results.append(client.pair(local["frames"][0], local["frames"][1]))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 8
    assert max(int(r.batch[0]) for r in results) > 1, [int(r.batch[0]) for r in results]
    for r in results:
        assert np.abs(r.flow - local["pair"].flow).max() <= 1e-5


@needs_server
@pytest.mark.slow
def test_a_served_pair_gets_its_own_answer_whatever_its_batch(server, small_export):
    """Mixed pairs sent at once (Triton batches them): each gets the iteration count, stop reason and flow it
    gets alone (issue 23), not the batch's."""
    from deqflow import middlebury
    from runtime import FlowEstimator, SolveOverrides, create_backend

    left, right, _, _ = middlebury.motorcycle()
    corners = [(0, 0), (100, 200), (300, 400), (200, 550)]
    pairs = [(left[y:y + 128, x:x + 160], right[y:y + 128, x:x + 160]) for y, x in corners]
    with create_backend("onnxruntime", small_export, threads=1,
                        settings=SolveOverrides(max_iter=40, tol=5e-3, stop_mode="rel")) as backend:
        alone = [FlowEstimator(backend)(a, b) for a, b in pairs]
    results: dict[int, object] = {}

    def one(k: int) -> None:
        with flow_client(server.http) as client:
            results[k] = client.pair(*pairs[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == list(range(len(pairs))) and max(int(r.batch[0]) for r in results.values()) > 1
    assert len({ref.iterations for ref in alone}) == len(pairs)  # really mixed
    for k, ref in enumerate(alone):
        assert int(results[k].iterations[0]) == ref.iterations
        assert results[k].stop_reasons == [ref.result.stop_reasons[0]]
        assert np.abs(results[k].flow - ref.flow).max() <= 1e-5


@needs_server
@pytest.mark.slow
def test_stream_is_warm_started(server, local):
    with flow_client(server.grpc) as client:
        stream = client.stream()
        video = local["frames"]
        assert stream.send(video[0]) is None
        served = [stream.send(f, last=i == len(video) - 2) for i, f in enumerate(video[1:])]
    assert [s.warm for s in served] == [False, True, True]
    cold = int(served[0].iterations[0])
    assert all(int(s.iterations[0]) < cold for s in served[1:]), [int(s.iterations[0]) for s in served]
    for s, ref in zip(served, local["stream"]):
        assert int(s.iterations[0]) == ref.iterations
        assert np.abs(s.flow - ref.flow).max() <= 1e-5


@needs_server
@pytest.mark.slow
def test_bad_requests_are_refused_while_others_are_served(server, local):
    from runtime.serving.client import ServingError

    good = np.zeros((1, 3, 128, 160), np.float32) + 100
    bad = {
        "shape": ({"image1": np.zeros((1, 4, 128, 160), np.float32), "image2": np.zeros((1, 4, 128, 160), np.float32)},
                  "unexpected shape"),
        "dtype": ({"image1": good.astype(np.float64), "image2": good.astype(np.float64)}, "FP64"),
        "multiple of 8": ({"image1": np.zeros((1, 3, 128, 164), np.float32),
                           "image2": np.zeros((1, 3, 128, 164), np.float32)}, "not a multiple of 8"),
        "too small": ({"image1": np.zeros((1, 3, 64, 64), np.float32), "image2": np.zeros((1, 3, 64, 64), np.float32)},
                      "too small"),
        "nan": ({"image1": np.full_like(good, np.nan), "image2": good}, "NaN"),
        "missing": ({"image1": good}, "missing required input"),
        "oversized batch": ({"image1": np.repeat(good, 9, 0), "image2": np.repeat(good, 9, 0)}, "batch-size must be"),
    }
    served, stop = [], threading.Event()

    def keep_serving() -> None:
        with flow_client(server.http) as client:
            while not stop.is_set():
                served.append(client.pair(local["frames"][0], local["frames"][1]))

    worker = threading.Thread(target=keep_serving)
    worker.start()
    try:
        with flow_client(server.grpc) as client:
            for inputs, words in bad.values():
                with pytest.raises(ServingError, match=re.escape(words)):
                    client.infer("deqflow_flow", inputs)
            frame = {"frame": good}
            with pytest.raises(ServingError, match="START flag"):  # a sequence nobody started
                client.infer("deqflow_stream", frame, sequence_id=987654321, sequence_start=False)
            stream = client.stream()
            stream.send(local["frames"][0])
            stream.send(local["frames"][1], last=True)
            with pytest.raises(ServingError, match="START flag"):  # the same sequence after its end
                stream.send(local["frames"][2])
            with pytest.raises(ServingError, match="correlation ID"):  # the stream model without a sequence
                client.infer("deqflow_stream", frame)
    finally:
        stop.set()
        worker.join(timeout=300)
    assert served and all(np.abs(s.flow - local["pair"].flow).max() <= 1e-5 for s in served)
    with flow_client(server.http) as client:
        assert client.ready()


@needs_server
@pytest.mark.slow
def test_oversized_borderline_and_normal_requests_concurrently(server, local):
    """--max-size 128x160: a larger frame gets one clean line naming its size and the limit; the borderline
    (exactly 128x160) and normal ones sent at the same time get their flow, and the server keeps serving."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime.serving.client import ServingError

    big = np.zeros((1, 3, 256, 320), np.float32) + 100

    def oversized(url: str) -> str:
        with flow_client(url) as client:
            try:
                client.infer("deqflow_flow", {"image1": big, "image2": big})
            except ServingError as exc:
                return str(exc)
        return "answered"

    def normal(url: str):
        with flow_client(url) as client:
            return client.pair(local["frames"][0], local["frames"][1])

    with ThreadPoolExecutor(6) as pool:
        errors = [pool.submit(oversized, url) for url in (server.http, server.grpc, server.http)]
        flows = [pool.submit(normal, url) for url in (server.grpc, server.http, server.grpc)]
        errors, flows = [f.result(timeout=300) for f in errors], [f.result(timeout=300) for f in flows]
    for text in errors:
        assert "frame 256x320 has 81920 pixels, more than this server admits (20480" in text, text
        assert "Traceback" not in text and "/tmp/" not in text and ".py" not in text and "\n" not in text
    assert all(np.abs(f.flow - local["pair"].flow).max() <= 1e-5 for f in flows)
    with flow_client(server.http) as client:
        assert client.ready()


@needs_server
@pytest.mark.slow
def test_infer_with_server_writes_the_same_flow_as_local_inference(server, local, tmp_path):
    """`deqflow infer --server URL` (a pair, then a folder) runs infer's pipeline with the solves on the server."""
    from deqflow.cli import main
    from deqflow.flow_io import read_flo
    from deqflow.image_io import write_image

    video = local["frames"]
    for k, frame in enumerate(video):
        write_image(tmp_path / "frames" / f"{k:03d}.png", frame)
    for url in (server.http, server.grpc):
        out = tmp_path / url.split(":")[0]
        assert main(["infer", "--server", url, "--image1", str(tmp_path / "frames" / "000.png"), "--image2",
                     str(tmp_path / "frames" / "001.png"), "--output", str(out / "pair")]) == 0
        assert np.abs(read_flo(out / "pair" / "flow.flo") - local["pair"].flow).max() <= 1e-5
    assert main(["infer", "--server", server.grpc, "--folder", str(tmp_path / "frames"), "--output",
                 str(tmp_path / "seq")]) == 0
    assert len(list((tmp_path / "seq").rglob("*.flo"))) == len(video) - 1
    assert main(["infer", "--server", server.grpc, "--model", "x.onnx", "--folder", str(tmp_path / "frames"),
                 "--output", str(tmp_path / "bad")]) == 2


@needs_server
@pytest.mark.slow
def test_server_stops_cleanly_after_in_flight_requests(server, local):
    from runtime import prepare

    batch = prepare([local["frames"][0]] * 8, [local["frames"][1]] * 8)
    client, sent = flow_client(server.http), []  # (start, end, flow or error)

    def keep_sending() -> None:
        while True:
            start = time.monotonic()
            try:
                flow = client.infer_padded(batch.image1, batch.image2).flow
                sent.append((start, time.monotonic(), flow))
            except Exception as exc:  # refused once the server stops: ends the loop
                sent.append((start, time.monotonic(), exc))
                return

    worker = threading.Thread(target=keep_sending)
    worker.start()
    time.sleep(1.0)
    signalled = time.monotonic()
    assert server.stop() == 0, server.log.read_text()[-3000:]
    worker.join(timeout=120)
    client.close()
    in_flight = [r for start, end, r in sent if start < signalled < end]
    assert in_flight and all(isinstance(r, np.ndarray) for r in in_flight), in_flight
    assert np.abs(batch.unpad(in_flight[0]) - local["pair"].flow[None]).max() <= 1e-5
    assert "deqflow serve: stopped" in server.log.read_text()
    assert not server.leftovers()
    assert not server.workspace.exists() or not any(server.workspace.iterdir())


# ---- model repositories for NVIDIA's Triton -------------------------------------------------------------------

needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                        reason="checking config.pbtxt needs tritonclient (pip install deqflow[serve])")


@needs_tritonclient
@pytest.mark.slow
def test_every_repository_config_parses_against_model_config(small_export, tmp_path):
    from runtime import SolveOverrides
    from runtime.serving.triton_repo import RepoOptions, parse_config, write_repository

    whole = tmp_path / "unrolled.onnx"
    done = cli("export", "--checkpoint", str(CHECKPOINT), "--output", str(whole), "--layout", "unrolled", "--iters",
               "2", "--height", "128", "--width", "160")
    assert done.returncode == 0, done.stderr[-2000:]
    plan = tmp_path / "unrolled.engine"
    plan.write_bytes(b"stand-in: only the configuration is written")
    cases = {"split-ort": (small_export, RepoOptions()), "split-python": (small_export, RepoOptions(parts="python")),
             "static-ort": (whole, RepoOptions(device="cpu")), "static-trt": (whole, RepoOptions(plan=str(plan))),
             "split-settings": (small_export, RepoOptions(settings=SolveOverrides(max_iter=20, tol=1e-3)))}
    for name, (export, options) in cases.items():
        configs = write_repository(export, tmp_path / name, options)
        parsed = {c.parent.name: parse_config(c.read_text()) for c in configs}
        assert all(p.name == n for n, p in parsed.items())
        if name.startswith("split"):
            assert set(parsed) == {"deqflow_encoder", "deqflow_step", "deqflow_decode", "deqflow_flow",
                                   "deqflow_stream"}
            assert parsed["deqflow_stream"].sequence_batching.control_input[0].name == "START"
            assert parsed["deqflow_flow"].backend == "python" and parsed["deqflow_flow"].max_batch_size == 8
            assert (tmp_path / name / "deqflow_flow" / "1" / "model.py").is_file()
        else:
            flow = parsed["deqflow_flow"]
            assert flow.platform == ("tensorrt_plan" if options.plan else "onnxruntime_onnx")
            assert flow.max_batch_size == 0 and [d for d in flow.input[0].dims] == [1, 3, 128, 160]
    with pytest.raises(Exception, match="ModelConfig"):
        parse_config('name: "x"\nmax_batch_size: "eight"\n')


@needs_server
@pytest.mark.slow
def test_split_repository_runs_in_the_bundled_triton(small_export, local, tmp_path, monkeypatch):
    """The split layout's python-backend host solver (BLS to encoder/step/decode), served by the Triton that
    PyTriton bundles: it has no onnxruntime backend, so the three graphs run with ONNX Runtime in python models."""
    from pytriton.triton import Triton, TritonConfig

    from runtime import SolveOverrides
    from runtime.serving.client import ServingError
    from runtime.serving.process import free_ports
    from runtime.serving.server import use_own_libpython
    from runtime.serving.triton_repo import RepoOptions, write_repository

    repo = tmp_path / "repo"
    write_repository(small_export, repo, RepoOptions(parts="python", device="cpu", settings=SolveOverrides(
        max_iter=40, tol=5e-3, stop_mode="rel")))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the python stubs import deqflow from this checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))
    use_own_libpython()
    http, grpc, metrics = free_ports(3)
    config = TritonConfig(http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1", grpc_port=grpc,
                          metrics_address="127.0.0.1", metrics_port=metrics, model_repository=repo)
    triton = Triton(config=config, workspace=tmp_path / "workspace")
    try:
        triton.run()
        with flow_client(f"http://127.0.0.1:{http}") as client:
            deadline = time.monotonic() + 240
            while not all(client.client.is_model_ready(m) for m in ("deqflow_flow", "deqflow_stream")):
                assert time.monotonic() < deadline, "the repository's models did not load"
                time.sleep(1)
            served = client.pair(local["frames"][0], local["frames"][1])
            assert np.abs(served.flow - local["pair"].flow).max() <= 1e-5
            stream = client.stream()
            stream.send(local["frames"][0])
            first, second = (stream.send(f, last=i == 1) for i, f in enumerate(local["frames"][1:3]))
            assert (first.warm, second.warm) == (False, True)
            assert int(second.iterations[0]) == local["stream"][1].iterations < int(first.iterations[0])
            with pytest.raises(ServingError, match="NaN"):
                client.infer_padded(np.full((1, 3, 128, 160), np.nan, np.float32), np.zeros((1, 3, 128, 160),
                                                                                             np.float32))
            assert client.ready()
    finally:
        triton.stop()
