"""Multi-process training on CPU: torchrun with 2 gloo processes keeps the replicas identical; the replica
check notices replicas that differ; logged metrics are averaged over ranks; a NaN on one rank stops every rank."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY_ENCODER_DIMS, subprocess_env

from training.checkpoint import load_model
from training.config import ModelConfig
from training.model.deq_flow import DEQFlow


@pytest.mark.slow
def test_torchrun_two_cpu_processes_keep_replicas_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "deqflow.cli", "train", "--stage", "synthetic", "--tiny",
           "--encoder-dims", *map(str, TINY_ENCODER_DIMS), "--num-steps", "4", "--batch-size", "2",
           "--image-size", "128", "128", "--f_thres", "4",
           "--n_losses", "2", "--f_solver", "fixed_point", "--ckpt-every", "2", "--log-every", "1",
           "--val-every", "1000", "--device", "cpu", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # replicas.json is written only by a distributed run: the checksum of the parameters, gathered from
    # both ranks at the last checkpoint (step 4), must agree exactly
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas == {"step": 4, "checksum_spread": 0.0}
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["step"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # only rank 0 logs
    # the saved replica trained: finite weights that moved away from the common initialisation
    model, _ = load_model(out / "final.pth")
    torch.manual_seed(1234)  # the default --seed: every rank starts from these weights
    init = DEQFlow(ModelConfig(variant="T", encoder_dims=TINY_ENCODER_DIMS)).state_dict()
    state = model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not torch.equal(state["fnet.conv1.weight"], init["fnet.conv1.weight"])
    assert torch.equal(state["fnet.conv1.weight"], last["state_dict"]["fnet.conv1.weight"])


CHECK_SCRIPT = textwrap.dedent("""
    import json, sys
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from training.train import Trainer, TrainingDiverged


    def worker(rank, store, out):
        dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        fake = SimpleNamespace(distributed=True, model=model, device=torch.device("cpu"), world=2, step=6,
                               cfg=SimpleNamespace(gamma=0.8, drift_weight=0.0),
                               optimizer=SimpleNamespace(zero_grad=lambda **k: None),
                               _last_good_text=lambda: "LAST")
        same = Trainer.check_replicas(fake)
        if rank == 1:
            with torch.no_grad():
                model[1].weight[0, 0] += 1e-4
        differ = Trainer.check_replicas(fake)
        logged = Trainer.mean_over_ranks(fake, {"loss": 1.0 + 2 * rank, "epe": 10.0 * rank, "lr": 4e-4})
        # only rank 1 meets a NaN: both ranks must stop (rank 0 would otherwise wait in backward forever)
        flow = torch.zeros(1, 2, 8, 8)
        pred = flow + (float("nan") if rank == 1 else 1.0)
        fake.ddp = lambda a, b: SimpleNamespace(flow_predictions=[pred])
        try:
            Trainer.train_step(fake, (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), flow, torch.ones(1, 8, 8)))
            stop = "did not stop"
        except TrainingDiverged as exc:
            stop = str(exc)
        except Exception as exc:
            stop = "went on: " + repr(exc)
        with open(out + str(rank), "w") as fh:
            json.dump({"same": same, "differ": differ, "stop": stop, "logged": logged}, fh)
        dist.destroy_process_group()


    if __name__ == "__main__":
        mp.start_processes(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2, start_method="spawn")
""")


@pytest.mark.slow
def test_replica_check_and_divergence_stop_work_across_ranks(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    result = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(result)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{result}{rank}").read_text()) for rank in (0, 1)]
    for r in ranks:
        assert r["same"] == 0.0
        assert abs(r["differ"] - 1e-4) < 1e-6
        assert r["logged"] == pytest.approx({"loss": 2.0, "epe": 5.0, "lr": 4e-4})  # the global batch's mean
    assert ranks[1]["stop"].startswith("loss became nan at step 7; LAST")
    assert ranks[0]["stop"].startswith("loss became a non-finite value on another rank at step 7; LAST")
