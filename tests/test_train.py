"""Training: the bundle's train.json runs, the loss falls, checkpoints load at inference and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pipelines.bundle import bundle_root, load_workflow
from pipelines.screening.inference import CheckpointError, load_weights
from pipelines.training.data import load_datalist
from pipelines.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = bundle_root() / "configs"
TINY = {  # the smoke profile made smaller still: 16^3 patches, 20 iterations, one validation
    "train#patch_size": [16, 16, 16],
    "settings#roi_size": [32, 32, 32],
    "train#epoch_length": 5,
    "train#trainer#max_epochs": 4,
    "val_interval": 4,
}


def _inference_parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    return parser


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_ds"), n=3, seed=0)


def test_train_json_reuses_inference_network_and_preprocessing() -> None:
    train_cfg = json.loads((CONFIGS / "train.json").read_text())
    assert "network_def" not in train_cfg and "settings" not in train_cfg
    text = (CONFIGS / "train.json").read_text()
    # the HU window and spacing are only referenced from inference.json's settings, never given a value here
    for key in ("hu_min", "hu_max", "target_spacing_mm"):
        values = re.findall(rf'"{key}":\s*([^,\n}}]+)', text)
        assert all(v.strip() == f'"@settings#{key}"' for v in values), (key, values)
    wf = load_workflow(
        ["inference.json", "train.json"], workflow_type="train", overrides={"dataset_dir": "x"}
    )
    p = wf.parser
    assert p["network_def"] == _inference_parser()["network_def"]
    names = [t["_target_"] for t in p["preprocessing"]["transforms"]]
    assert names[-1] == "pipelines.imaging.transforms.ScaleHUd" and p[
        "preprocessing#transforms#0#label_keys"
    ] == [
        "label",
        "lungs",
    ]
    assert "@preprocessing" in p["train#preprocessing#transforms"]


def test_mlflow_tracking_patches_standard_handler_ids(tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / f) for f in ("inference.json", "train.json")]
    wf = ConfigWorkflow(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        tracking="mlflow",
        logging_file=False,
        dataset_dir=str(tmp_path),
        bundle_root=str(bundle_root()),
        output_dir=str(tmp_path),
    )
    targets = [h.get("_target_") for h in wf.parser["train#handlers"] if isinstance(h, dict)]
    assert "MLFlowHandler" in targets
    assert any(h.get("_target_") == "MLFlowHandler" for h in wf.parser["validate#handlers"])


def test_datalist_items_are_absolute_with_lungs(tiny_dataset: Path) -> None:
    items = load_datalist(tiny_dataset, "training")
    assert len(items) == 2 and all(Path(it["lungs"]).is_file() for it in items)
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        load_datalist(tiny_dataset / "nope", "training")


def test_bundle_patch_sampling_centres_negatives_on_mined_false_positives(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """train#hard_negatives: a mined spot (world LPS mm) reaches the negative patch centres of its case at the
    configured share, on the right voxel of the preprocessed (lung-cropped, resampled) grid."""
    import SimpleITK as sitk
    from monai.transforms import Compose

    item = load_datalist(tiny_dataset, "training")[0]
    lungs = sitk.ReadImage(item["lungs"])
    ijk = np.argwhere(sitk.GetArrayFromImage(lungs) == 2)[0][::-1] + np.asarray(
        [2, 2, 2]
    )  # a left-lung voxel
    spot = list(lungs.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
    table = tmp_path / "hard_negatives.json"
    table.write_text(json.dumps({"cases": {item["seriesuid"]: [spot]}}))
    overrides = {
        "dataset_dir": str(tiny_dataset),
        "train#hard_negatives": str(table),
        "train#hard_negative_fraction": 0.25,
    }
    wf = load_workflow(["inference.json", "train.json"], workflow_type="train", overrides=overrides)
    chain = wf.parser.get_parsed_content("train#preprocessing").transforms
    n_random = len(wf.parser.get_parsed_content("train#random"))
    d = Compose(chain[: len(chain) - n_random])(item)
    values, counts = np.unique(d["bg_indices"], return_counts=True)
    assert counts.max() == round(len(d["bg_indices"]) * 0.25)  # the share asked for
    top = np.asarray(np.unravel_index(values[counts.argmax()], d["label"].shape[1:]), float)
    assert np.linalg.norm(d["geometry"].network_to_world(top[None])[0] - np.asarray(spot)) <= 1.5  # mm


def test_smoke_training_loss_falls_checkpoint_loads_and_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = {"dataset": tiny_dataset, "out": out, "profile": "smoke", "device": "cpu", "evaluate": False}
    r1 = train(**kw, overrides=TINY, stages=["segmentation"])["segmentation"]
    assert r1["iterations"] == 20 and len(r1["losses"]) == 20
    assert r1["loss_last"] < r1["loss_first"] * 0.95, r1["losses"]
    assert r1["best_val_dice"] is not None
    ckpt = Path(r1["checkpoint"])
    assert ckpt.is_file() and (out / "models" / "model.pt").is_file()
    net = load_weights(_inference_parser().get_parsed_content("network_def"), out / "models" / "model.pt")
    load_weights(_inference_parser().get_parsed_content("network_def"), ckpt)  # full state: "model" key
    assert sum(p.numel() for p in net.parameters()) > 100_000
    r2 = train(**kw, overrides={**TINY, "train#trainer#max_epochs": 6}, stages=["segmentation"], resume=True)
    seg = r2["segmentation"]
    assert seg["start_iteration"] == 20 and seg["iterations"] == 30 and len(seg["losses"]) == 10


def test_resume_without_or_with_bad_checkpoint_names_the_file(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        train(dataset=tiny_dataset, out=out, profile="smoke", resume=True, stages=["segmentation"])
    bad = out / "segmentation" / "checkpoints" / "last_checkpoint_epoch=1.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=str(bad)):
        train(dataset=tiny_dataset, out=out, profile="smoke", resume=True, stages=["segmentation"])


def test_wrong_architecture_checkpoint_is_refused(tmp_path: Path) -> None:
    parser = _inference_parser()
    cls = parser.get_parsed_content("classifier_def")
    path = tmp_path / "classifier_as_unet.pt"
    torch.save(cls.state_dict(), path)
    with pytest.raises(CheckpointError, match=f"{path}.*architecture"):
        load_weights(parser.get_parsed_content("network_def"), path)
    with pytest.raises(ValueError, match="profile"):
        train(dataset=tmp_path, out=tmp_path / "o", profile="huge")


@pytest.mark.slow
def test_both_stages_and_validation_metrics_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = train(dataset=tiny_dataset, out=out, profile="smoke", device="cpu", overrides=TINY)
    cls = r["classifier"]
    assert cls["patches"]["annotation_pos"] == 4 and cls["patches"]["total"] > 10
    load_weights(_inference_parser().get_parsed_content("classifier_def"), out / "models" / "classifier.pt")
    ev = r["evaluation"]
    assert ev["scans"] == 1 and (out / "evaluation" / "metrics.json").is_file()
    assert ev["lung_dice_right"] is not None and ev["lung_dice_right"] > 0.9
    assert json.loads((out / "train_result.json").read_text())["profile"] == "smoke"


@pytest.mark.slow
def test_torchrun_two_process_gloo_multi_gpu_overlay(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "train#trainer#max_epochs": 2}.items()]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "pipelines.cli", "train", "--dataset", str(tiny_dataset), "--out", str(out), "--profile", "smoke",
        "--device", "cpu", "--stages", "segmentation", "--set", *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LUNGSCREEN_TRAIN_NO_EVAL": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "segmentation" / "train_log.jsonl").read_text().splitlines()]
    iters = [row["iteration"] for row in log if "loss" in row]
    assert iters == list(range(1, 11))  # rank 0 alone logs; 2 epochs x 5 iterations
    load_weights(_inference_parser().get_parsed_content("network_def"), out / "models" / "model.pt")


def test_gpu_fast_overlay_trains_with_device_cached_volumes(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gpu-device profile's overlay (volumes cached on the device, ThreadDataLoader, random transforms on
    the device) trains end to end; here the device is the CPU, so only the wiring is checked, not the speed.
    The plain gpu profile keeps worker processes (measured faster on an H200)."""
    from pipelines.training import profiles

    assert profiles.PROFILES["gpu-device"][-1] == "train_gpu_fast.json"
    assert "train_gpu_fast.json" not in profiles.PROFILES["gpu"]
    monkeypatch.setitem(profiles.PROFILES, "smoke", [*profiles.PROFILES["smoke"], "train_gpu_fast.json"])
    over = {**TINY, "train#paste_prob": 1.0}
    r = train(
        dataset=tiny_dataset,
        out=tmp_path / "run",
        profile="smoke",
        device="cpu",
        evaluate=False,
        overrides=over,
        stages=["segmentation"],
    )["segmentation"]
    assert r["iterations"] == 20 and all(np.isfinite(r["losses"]))
    wf = load_workflow(
        [*profiles.PROFILES["smoke"]],
        workflow_type="train",
        overrides={"dataset_dir": str(tiny_dataset), "settings#device": "cpu", **profiles.SMOKE_OVERRIDES},
    )
    assert type(wf.parser.get_parsed_content("train#dataloader")).__name__ == "ThreadDataLoader"


def test_train_probe_times_loader_and_step_of_the_profile(tiny_dataset: Path, tmp_path: Path) -> None:
    """The probe builds the profile's own loader and network and reports rates that add up."""
    from pipelines.segmentation.probe import main, probe

    r = probe(dataset=tiny_dataset, profile="smoke", device="cpu", seconds=0.2, overrides=dict(TINY))
    smoke_batch = 2  # SMOKE_OVERRIDES: batch 1 volume x num_samples 2 patches
    assert r["patches_per_batch"] == smoke_batch and r["device"] == "cpu"
    assert r["loader_batches_per_s"] > 0 and r["step_per_s"] > 0
    assert r["loader_patches_per_s"] == pytest.approx(r["loader_batches_per_s"] * smoke_batch, rel=0.01)
    assert r["bound"] == ("loader" if r["loader_batches_per_s"] < r["step_per_s"] else "step")
    out = tmp_path / "probe.json"
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["--dataset", str(tiny_dataset), "--profile", "smoke", "--device", "cpu", "--seconds", "0.1",
                 "--out", str(out), "--set", *sets]) == 0  # fmt: skip
    assert json.loads(out.read_text())["profile"] == "smoke"
