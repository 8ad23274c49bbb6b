"""The bad-input battery: every command refuses bad input with exit 2, one line that names the problem
(and, where there is one, the fix), no traceback, and no file written or changed.

Covers train, sample, inspect, export, import, unlearn, relearn-attack, evaluate and compare: missing and
unreadable files, pickles, model–data pairings that cannot work (resolution, channels, classes), classes
not in the data, empty forget sets and forget sets that are the whole data, out-of-range λ / lr / steps /
batch sizes, unreadable images, outputs in missing or unwritable folders or on top of the input, gate
syntax errors, and misuse of --checkpoint-every / --resume. ``unlearn`` and ``relearn-attack`` run with
``--quiet`` here: without it they print a status line before they load the data.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from reliability_common import error_lines, untrained_checkpoint
from unlearnctl.checkpoint import export_diffusers, save_checkpoint

UNLEARN = ("unlearn", "-m", "{model}", "--out", "{tmp}/u.safetensors", "--quiet")
ATTACK = ("relearn-attack", "-m", "{model}", "--out", "{tmp}/a.safetensors", "--quiet")
TRAIN = ("train", "--out", "{tmp}/m.safetensors", "--data", "{data}", "--size", "tiny", "--steps", "1")

NAN_MESSAGE = "model {nan} has non-finite weights in tensor conv_in.bias (1 NaN/Inf values); the file is broken — re-export or retrain it"

BAD = [
    # train
    (TRAIN[:-2] + ("--data", "npz:{inputs}/missing.npz"), "npz file {inputs}/missing.npz does not exist"),
    (TRAIN + ("--data", "npz:{inputs}/float.npz"), "'images' must be uint8, got float32"),
    (TRAIN + ("--data", "folder:{inputs}/images"), "cannot read image {inputs}/images/b/broken.png; remove it or convert it to PNG"),
    (TRAIN + ("--data", "pickle:{inputs}/x"), "unknown data source 'pickle:{inputs}/x': no such folder or .npz file; use digits"),
    (TRAIN + ("--resolution", "3"), "resolution must be between 4 and 512, got 3"),
    (TRAIN + ("--channels", "2"), "channels must be 1 or 3, got 2"),
    (TRAIN + ("--batch-size", "0"), "batch size must be at least 1, got 0"),
    (TRAIN + ("--ema-decay", "1.5"), "EMA decay must be in [0, 1), got 1.5"),
    (TRAIN + ("--unet-config", "{inputs}/broken.json"), "UNet config file {inputs}/broken.json is not valid JSON"),
    (TRAIN + ("--size", "large"), "model size 'large' needs a resolution divisible by 8 and at least 16, got 8"),
    (("train", "--out", "/proc/m.safetensors", "--data", "{data}"), "output folder /proc is not writable; choose another --out folder"),
    (TRAIN + ("--grid", "{tmp}/nodir/g.png"), "output folder {tmp}/nodir does not exist; create it first"),
    (TRAIN + ("--exclude-class", "bar", "--exclude-class", "column", "--exclude-class", "box", "--exclude-class", "cross"),
     "the forget set is the whole training set; nothing would be retained"),
    (TRAIN + ("--checkpoint-every", "-1"), "--checkpoint-every must be >= 0 steps"),
    (TRAIN + ("--resume", "{inputs}/missing.state.safetensors"), "does not exist; give the .state.safetensors file written by --checkpoint-every"),
    (TRAIN + ("--resume", "{model}"), "is a model checkpoint, not a resume state; pass the .state.safetensors file"),
    (TRAIN + ("--resume", "{inputs}/unlearn.state.safetensors"), "was written by `unlearn`, not `train`; resume it with the command that wrote it"),
    (TRAIN + ("--resume", "{inputs}/other.state.safetensors"), "was saved with conditional=null, this run has conditional=true; rerun with the same options"),
    (TRAIN + ("--resume", "{inputs}/cut.state.safetensors"), "is not a valid safetensors file"),
    (("train", "--out", "{inputs}/busy.safetensors", "--data", "{data}", "--checkpoint-every", "2"),
     "busy.state.safetensors holds the state of an interrupted run; continue it with --resume"),
    # sample, inspect, export, import
    (("sample", "-m", "{inputs}/missing.safetensors", "--out", "{tmp}/s.png"), "checkpoint {inputs}/missing.safetensors does not exist"),
    (("sample", "-m", "{inputs}/zip.safetensors", "--out", "{tmp}/s.png"), "is a pickle/zip archive (torch.save format), not safetensors"),
    (("sample", "-m", "{model}", "--out", "{tmp}/s.png", "--per-class", "0"), "images per class must be at least 1, got 0"),
    (("sample", "-m", "{uncond}", "--out", "{tmp}/s.png", "--class", "bar"), "this model is unconditional; --class needs a class-conditional model"),
    (("sample", "-m", "{model}", "--out", "{tmp}/s.png", "--device", "banana"), "unknown device 'banana'; use auto, cpu, cuda or cuda:N"),
    (("sample", "-m", "{model}", "--out", "{tmp}/s.png", "--npz", "{tmp}/nodir/s.npz"), "output folder {tmp}/nodir does not exist"),
    (("inspect", "{inputs}/broken.json"), "is not a valid safetensors file (bad header size)"),
    (("inspect", "{inputs}/other.state.safetensors"), "is a resume state written by --checkpoint-every, not a model; pass it to --resume"),
    (("export", "-m", "{model}", "--diffusers-dir", "{inputs}/exported"), "exists and is not empty; choose a new folder"),
    (("import", "{inputs}/images", "--out", "{tmp}/i.safetensors"), "has no config.json; is it a diffusers save_pretrained folder?"),
    (("import", "{inputs}/pickled", "--out", "{tmp}/i.safetensors"), "pickle weights (.bin) are refused because loading them can run code"),
    (("import", "{inputs}/exported", "--out", "{tmp}/i.safetensors", "--data", "{data}", "--channels", "3"), "data has 3 channels, the model 1; pass --channels 1"),
    (("import", "{inputs}/exported", "--out", "{tmp}/i.safetensors", "--data", "digits"), "data has 10 classes, the model 5 class embeddings (for 4 classes and a null class, or 5 classes without one); give the --data the model was trained on"),
    (("import", "{inputs}/nan-exported", "--out", "{tmp}/i.safetensors"),
     "model {inputs}/nan-exported has non-finite weights in tensor conv_in.bias (1 NaN/Inf values); the file is broken"),
    (("import", "{inputs}/exported", "--out", "{inputs}/exported/unet/diffusion_pytorch_model.safetensors"),
     "is the source weights file of {inputs}/exported; write the imported checkpoint to a new file"),
    # a model with a NaN weight: every command that loads one refuses it, naming the tensor
    (("sample", "-m", "{nan}", "--out", "{tmp}/s.png"), NAN_MESSAGE),
    (("export", "-m", "{nan}", "--diffusers-dir", "{tmp}/e"), NAN_MESSAGE),
    (("inspect", "{nan}", "--verify"), "nan.safetensors failed verification: non-finite weights in tensor conv_in.bias (1 NaN/Inf values)"),
    (("evaluate", "-m", "{nan}", "--forget-class", "bar", "--gate", "forget_rate<=0.05", "-n", "8"), NAN_MESSAGE),
    (ATTACK[:2] + ("{nan}",) + ATTACK[3:], NAN_MESSAGE),
    # unlearn
    (UNLEARN + ("--method", "nonsense", "--forget-class", "bar"), "unknown method 'nonsense'; choose one of: siss"),
    (UNLEARN + ("--method", "siss", "--forget-class", "giraffe"), "class 'giraffe' is not in the data; classes are: bar, column, box, cross"),
    (UNLEARN + ("--method", "siss"), "the forget set is empty; give --forget-class, --forget-index, --forget-canary or --forget-images"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--forget-class", "column", "--forget-class", "box", "--forget-class", "cross"),
     "the forget set is the whole training set; nothing would be retained"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--lambda", "1.5"), "λ must be strictly between 0 and 1, got 1.5"),
    (UNLEARN + ("--method", "naive", "--forget-class", "bar", "--lambda", "0.5"), "--lambda is not a parameter of naive (it belongs to siss)"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--lr", "5"), "learning rate must be in (0, 1], got 5.0"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--steps", "0"), "steps must be at least 1, got 0"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--until-forget-rate", "2"), "target forget rate must be in [0, 1], got 2.0"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--data", "{data}", "--resolution", "16"),
     "data resolution 16 does not match the model's 8; pass --resolution 8"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--data", "{data}", "--channels", "3"), "data has 3 channels, the model 1; pass --channels 1"),
    (UNLEARN + ("--method", "siss", "--forget-images", "{inputs}/big.npz"), "are 16×16, the model's 8×8; resize them first"),
    (UNLEARN + ("--method", "siss", "--forget-index", "5000"), "forget index 5000 is outside the training set (0..191)"),
    (UNLEARN + ("--method", "siss", "--forget-canary"), "the data has no canary; train on --data digits+canary"),
    (("unlearn", "-m", "{model}", "--out", "{model}", "--method", "siss", "--forget-class", "bar"),
     "is the input model; write the unlearned model to a new file"),
    (UNLEARN + ("--method", "siss", "--forget-class", "bar", "--resume", "{inputs}/other.state.safetensors"), "was written by `train`, not `unlearn`"),
    # relearn-attack
    (ATTACK + ("--aux", "nonsense"), "unknown auxiliary source 'nonsense'; use one of: retain[:FRACTION]"),
    (ATTACK + ("--aux", "retain:1.5"), "retain fraction must be in (0, 1], got 1.5; e.g. retain:0.25"),
    (ATTACK + ("--aux", "npz:{inputs}/missing.npz"), "npz file {inputs}/missing.npz does not exist"),
    (ATTACK + ("--steps", "0"), "attack steps must be at least 1, got 0"),
    (ATTACK + ("--curve-json", "{tmp}/c.json"), "would hold a curve, but no curve is recorded; add --curve-every K"),
    (ATTACK + ("--curve-every", "2"), "--curve-every needs what to measure: give --forget-class"),
    # evaluate and compare
    (("evaluate", "-m", "{model}", "--gate", "forget_rate<<0.05"), "is not a number or a signed percentage like +10%"),
    (("evaluate", "-m", "{model}", "--gate", "forget_rate"), "is not NAME OP VALUE with OP one of"),
    (("evaluate", "-m", "{model}", "--gate", "fid<=+10%"), "is relative; pass --baseline BASE.json"),
    (("evaluate", "-m", "{model}", "--num-samples", "0"), "number of samples must be at least 1, got 0"),
    (("evaluate", "-m", "{model}", "--metric", "nonsense"), "unknown metric 'nonsense'; choose from quality, forget, retain, membership"),
    (("evaluate", "-m", "{model}", "--json", "{tmp}/out.txt"), "must end in .json"),
    (("evaluate", "-m", "{model}", "--audit-timesteps", "a,b"), "must be comma-separated integers, e.g. 25,50,100"),
    # data of another size or channel count than the model: one rule for every command (refused, never converted)
    (("evaluate", "-m", "{model}", "--data", "npz:{inputs}/big.npz"), "data resolution 16 does not match the model's 8; pass --resolution 8"),
    (("evaluate", "-m", "{model}", "--data", "{data}", "--channels", "3"), "data has 3 channels, the model 1; pass --channels 1"),
    (ATTACK + ("--data", "npz:{inputs}/big.npz"), "data resolution 16 does not match the model's 8; pass --resolution 8"),
    (("compare", "{inputs}/missing.json"), "missing.json does not exist"),
    (("compare", "{inputs}/broken.json"), "is not valid JSON"),
    (("compare", "{model}", "--report", "{tmp}/nodir/r.html"), "output folder {tmp}/nodir does not exist; create it first"),
]


@pytest.fixture(scope="module")
def inputs(shapes_split, shapes_npz, tmp_path_factory):
    """Every input file the battery needs, in one folder that no invocation may change."""
    import torch
    from PIL import Image

    from unlearnctl.resume import save_state

    folder = tmp_path_factory.mktemp("bad-input")
    model = untrained_checkpoint(shapes_split)
    save_checkpoint(model, folder / "model.safetensors")
    save_checkpoint(untrained_checkpoint(shapes_split, conditional=False), folder / "uncond.safetensors")
    np.savez(folder / "float.npz", images=np.zeros((10, 8, 8), dtype=np.float32))
    np.savez(folder / "big.npz", images=np.zeros((10, 16, 16), dtype=np.uint8))
    for name in ("a", "b"):
        (folder / "images" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "images" / name / "ok.png")
    (folder / "images" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.json").write_text("{not json")
    torch.save({"w": torch.zeros(1)}, folder / "zip.safetensors")
    export_diffusers(model, folder / "exported")
    weights = {k: v.clone() for k, v in model.state_dict.items()}
    weights["conv_in.bias"][0] = float("nan")
    broken = model.derive(weights, {"command": "train", "params": {}})
    save_checkpoint(broken, folder / "nan.safetensors")
    export_diffusers(broken, folder / "nan-exported")
    (folder / "pickled").mkdir()
    (folder / "pickled" / "config.json").write_text(json.dumps(model.unet_config))
    (folder / "pickled" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    save_state(folder / "unlearn.state.safetensors", "unlearn", {"method": "siss"}, 1, {"x": torch.zeros(1)})
    save_state(folder / "other.state.safetensors", "train", {"preset": "tiny"}, 1, {"x": torch.zeros(1)})
    whole = (folder / "other.state.safetensors").read_bytes()
    (folder / "cut.state.safetensors").write_bytes(whole[: len(whole) // 2])
    save_state(folder / "busy.state.safetensors", "train", {}, 1, {"x": torch.zeros(1)})
    return {"inputs": str(folder), "model": str(folder / "model.safetensors"), "uncond": str(folder / "uncond.safetensors"),
            "nan": str(folder / "nan.safetensors"),
            "data": f"npz:{shapes_npz}"}


def snapshot(folder) -> dict[str, str]:
    from pathlib import Path

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(Path(folder).rglob("*"))}


def test_the_battery_covers_every_command():
    commands = {args[0] for args, _ in BAD}
    assert commands == {"train", "sample", "inspect", "export", "import", "unlearn", "relearn-attack", "evaluate", "compare"}
    assert len(BAD) >= 30 and len({args for args, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("args, message", BAD, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_exits_2_with_one_line_naming_the_problem(cli, inputs, tmp_path, args, message):
    values = {**inputs, "tmp": str(tmp_path)}
    before_inputs, before_tmp = snapshot(inputs["inputs"]), snapshot(tmp_path)
    result = cli(*[a.format(**values) for a in args])
    assert result.code == 2, result
    lines = error_lines(result.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert message.format(**values) in " ".join(lines[0].split()), result.err
    assert "Traceback" not in result.err + result.out
    assert snapshot(tmp_path) == before_tmp and snapshot(inputs["inputs"]) == before_inputs
