"""DiMRA relearning attack: the forget-set guard, the sources, the attack and its curve files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from unlearnctl.attacks import AuxContext, available_aux_sources, get_aux_source
from unlearnctl.attacks.area import relearn_area
from unlearnctl.attacks.dimra import CURVE_CSV_COLUMNS, AttackConfig, build_aux_data, recorded_forget_sets, relearn_attack
from unlearnctl.attacks.guard import assert_disjoint, image_hashes
from unlearnctl.checkpoint import lineage_entry, load_checkpoint, save_checkpoint
from unlearnctl.data import DataSplit, ForgetSpec, resolve_forget, to_uint8
from unlearnctl.errors import BadInputError, RuntimeFailure

FORGET = ForgetSpec(classes=("2",))  # the "box" class of the shapes data
FAST = dict(steps=4, batch_size=16, num_generated=12, generate_steps=2, curve_samples=8, curve_sample_steps=2)


@pytest.fixture(scope="module")
def unlearned(tiny_conditional, shapes_split, tmp_path_factory):
    """The tiny model with a lineage that records forgetting class 2 (the weights are the base's: the guard
    and the attack only read the lineage, so no unlearning run is needed to test them)."""
    forget_set = resolve_forget(FORGET, shapes_split)
    entry = lineage_entry("unlearn", {"method": "naive"}, 0, 0.0, method="naive", forget=forget_set.describe())
    checkpoint = tiny_conditional.derive(dict(tiny_conditional.state_dict), entry)
    path = save_checkpoint(checkpoint, tmp_path_factory.mktemp("attack") / "unlearned.safetensors")
    return load_checkpoint(path)


@pytest.fixture
def classifier_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def context(checkpoint, split, **kw) -> AuxContext:
    return AuxContext(checkpoint, split, recorded_forget_sets(checkpoint, split), device="cpu", **kw)


def hashes_of(images: torch.Tensor) -> set[str]:
    return set(image_hashes(images))


# --------------------------------------------------------------------------------------------- registry


def test_registry_lists_sources_and_rejects_unknown_names():
    assert available_aux_sources()[:4] == ["retain", "generated", "folder", "npz"]
    with pytest.raises(BadInputError, match=r"unknown auxiliary source 'public'.*retain\[:FRACTION\]"):
        get_aux_source("public")


# --------------------------------------------------------------------------------------------- the guard


def test_retain_source_holds_no_forget_image(unlearned, shapes_split):
    ctx = context(unlearned, shapes_split)
    forget = ctx.forget_sets[0]
    aux, info = build_aux_data(get_aux_source("retain"), "", ctx)
    assert not hashes_of(aux.images) & hashes_of(forget.forget.images)
    assert 2 not in aux.labels.tolist() and shapes_split.class_names[2] not in info["class_counts"]
    assert len(aux) == len(forget.retain) == info["num_images"]
    assert info["forget_fingerprints"] == [forget.fingerprint] and info["shared_images"] == 0


def test_retain_fraction_is_a_seeded_subset(unlearned, shapes_split):
    source = get_aux_source("retain")
    half, info = build_aux_data(source, "0.5", context(unlearned, shapes_split, seed=0))
    again, _ = build_aux_data(source, "0.5", context(unlearned, shapes_split, seed=0))
    other, _ = build_aux_data(source, "0.5", context(unlearned, shapes_split, seed=1))
    assert len(half) == round(0.5 * info["num_retain"])
    assert half.fingerprint == again.fingerprint != other.fingerprint
    for bad in ("0", "1.5", "half"):
        with pytest.raises(BadInputError, match="retain fraction"):
            build_aux_data(source, bad, context(unlearned, shapes_split))


def test_retain_source_drops_pixel_copies_of_forgotten_items(tiny_conditional, shapes_split):
    # a training set where image 5 appears twice; forgetting index 5 must keep its twin out of D_au too
    train = shapes_split.train
    twin = torch.tensor([*range(len(train)), 5])
    split = DataSplit(train.subset(twin), shapes_split.heldout, shapes_split.description)
    forget_set = resolve_forget(ForgetSpec(indices=(5,)), split)
    ctx = AuxContext(tiny_conditional, split, [forget_set], device="cpu")
    aux, info = build_aux_data(get_aux_source("retain"), "", ctx)
    assert info["dropped_exact_copies"] == 1
    assert len(aux) == len(train) - 1
    assert not hashes_of(aux.images) & hashes_of(forget_set.forget.images)


def test_user_aux_with_forget_images_is_refused(unlearned, shapes_split, tmp_path):
    forget = resolve_forget(FORGET, shapes_split).forget
    clean = shapes_split.heldout.subset(shapes_split.heldout.labels != 2)
    pixels = to_uint8(clean.images).transpose(0, 2, 3, 1)
    for name, extra in (("exact", forget.images[:1]), ("near", (forget.images[:1] + 2 / 255).clamp(-1, 1))):
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=np.concatenate([pixels, to_uint8(extra).transpose(0, 2, 3, 1)]),
                 labels=np.concatenate([clean.labels.numpy(), [0]]))
        with pytest.raises(BadInputError, match=f"1 {name} copies of forget-set images"
                           if name == "near" else "1 exact and 0 near copies"):
            build_aux_data(get_aux_source("npz"), str(path), context(unlearned, shapes_split))
    ok = tmp_path / "clean.npz"
    np.savez(ok, images=pixels, labels=clean.labels.numpy())
    aux, info = build_aux_data(get_aux_source("npz"), str(ok), context(unlearned, shapes_split))
    assert len(aux) == len(clean) and info["shared_images"] == 0
    np.savez(ok, images=pixels)  # a conditional model needs labels
    with pytest.raises(BadInputError, match="needs labels"):
        build_aux_data(get_aux_source("npz"), str(ok), context(unlearned, shapes_split))


def test_folder_source_maps_class_folders_to_model_classes(unlearned, shapes_split, tmp_path):
    from unlearnctl.sampling import save_png_folder

    held = shapes_split.heldout.subset(torch.isin(shapes_split.heldout.labels, torch.tensor([0, 3])))
    save_png_folder(held.images, held.labels, tmp_path / "aux", shapes_split.class_names)
    aux, info = build_aux_data(get_aux_source("folder"), str(tmp_path / "aux"), context(unlearned, shapes_split))
    assert sorted(aux.labels.tolist()) == sorted(held.labels.tolist()), info
    names = shapes_split.class_names
    assert info["class_counts"].keys() == {names[0], names[3]}
    (tmp_path / "aux" / names[3]).rename(tmp_path / "aux" / "zebra")
    with pytest.raises(BadInputError, match="class 'zebra' is not in the data"):
        build_aux_data(get_aux_source("folder"), str(tmp_path / "aux"), context(unlearned, shapes_split))


def test_generated_source_samples_retained_classes_and_drops_forget_copies(unlearned, shapes_split, monkeypatch):
    ctx = context(unlearned, shapes_split, num_generated=12, generate_steps=2)
    aux, info = build_aux_data(get_aux_source("generated"), "", ctx)
    assert len(aux) == 12 and set(aux.labels.tolist()) == {0, 1, 3} and info["classes"] == [0, 1, 3]

    # a model that regurgitates forget images: the guard drops every copy before training
    forget = ctx.forget_sets[0].forget.images
    import unlearnctl.diffusion as diffusion

    def regurgitate(unet, config, *, labels=None, num_images=None, **kw):
        count = len(labels) if labels is not None else num_images
        return torch.cat([forget[:3], shapes_split.train.images[:count - 3]])

    monkeypatch.setattr(diffusion, "sample_images", regurgitate)
    aux, info = build_aux_data(get_aux_source("generated"), "12", ctx)
    assert info["dropped_exact_copies"] == 3 and len(aux) == 12 - info["dropped_exact_copies"]
    assert not hashes_of(aux.images) & hashes_of(forget)


def test_assert_disjoint_fails_on_a_shared_image(shapes_split):
    images = shapes_split.train.images
    assert assert_disjoint(images[:10], images[10:20]) == 0
    with pytest.raises(RuntimeFailure, match="shares 1 images"):
        assert_disjoint(images[:10], images[9:20])


def test_lineage_forget_set_that_changed_is_refused(unlearned, shapes_split):
    entry = {**unlearned.lineage[-1], "forget": {**unlearned.lineage[-1]["forget"], "fingerprint": "0" * 16}}
    changed = unlearned.derive(unlearned.state_dict, entry)
    with pytest.raises(BadInputError, match="resolves to other images"):
        recorded_forget_sets(changed, shapes_split)


# --------------------------------------------------------------------------------------------- the attack


def test_attack_changes_weights_and_records_what_it_did(unlearned):
    attacked, curve = relearn_attack(unlearned, "retain:0.5", AttackConfig(**FAST), device="cpu")
    assert curve is None
    changed = [k for k in unlearned.state_dict if not torch.equal(unlearned.state_dict[k], attacked.state_dict[k])]
    assert len(changed) > len(unlearned.state_dict) // 2
    entry = attacked.lineage[-1]
    assert entry["command"] == "relearn-attack" and entry["parent_sha256"] == unlearned.sha256
    aux = entry["attack"]["aux"]
    assert entry["attack"]["name"] == "dimra" and aux["spec"] == "retain:0.5" and aux["shared_images"] == 0
    assert aux["forget_fingerprints"] == [unlearned.lineage[-1]["forget"]["fingerprint"]]
    assert entry["params"]["config"]["steps"] == FAST["steps"] and "method" not in entry


def test_curve_measures_without_changing_the_attack(unlearned, classifier_cache):
    config = AttackConfig(**FAST)
    plain, _ = relearn_attack(unlearned, "retain", config, device="cpu")
    attacked, curve = relearn_attack(unlearned, "retain", config, curve_every=3, device="cpu")
    assert [p["step"] for p in curve.points] == [0, 3, 4]
    assert all(0.0 <= p["forget_rate"] <= 1.0 and p["num_samples"] == p["forget_rate_n"] == 8 for p in curve.points)
    assert curve.forget["class_ids"] == [2] and curve.method == "naive"
    assert all(torch.equal(plain.state_dict[k], attacked.state_dict[k]) for k in plain.state_dict)
    assert attacked.lineage[-1]["curve"]["points"] == curve.points


def test_curve_step_0_is_evaluates_forget_rate(unlearned, classifier_cache):
    """The curve regenerates the forget-condition rows of `evaluate` (same labels, same initial noise, DDIM), so
    its step-0 point is the evaluation's forget rate of the same model, seed, sample count and steps."""
    from unlearnctl.checkpoint.model import build_unet
    from unlearnctl.metrics.evaluate import EvalConfig, evaluate

    torch.manual_seed(2)  # an untrained network: its samples are classified as several classes, not all "box"
    entry = lineage_entry("unlearn", {"method": "naive"}, 0, 0.0, method="naive", forget=unlearned.lineage[-1]["forget"])
    model = unlearned.derive(build_unet(unlearned.unet_config).state_dict(), entry)
    config = AttackConfig(**{**FAST, "steps": 1, "curve_samples": 30, "curve_sample_steps": 4, "curve_seed": 3})
    _, curve = relearn_attack(model, "retain:0.2", config, curve_every=1, device="cpu")
    total = curve.metric["eval_num_samples"]
    assert total == 30 * len(unlearned.data["class_names"]) and curve.metric["num_samples"] == 30
    result = evaluate(model, config=EvalConfig(num_samples=total, steps=4, seed=3, metrics=("forget",), device="cpu"))
    assert_point_is_evaluation(curve.points[0], result, 30)


def assert_point_is_evaluation(point: dict, result: dict, n: int) -> None:
    """A curve point equals an evaluation's forget rate on ``n`` samples: the same count, rate and interval."""
    assert result["num_forget_samples"] == point["num_samples"] == point["forget_rate_n"] == n
    assert 0 < result["forget_rate_count"] < n  # a rate of 0 or 1 would agree by chance
    assert point["forget_rate_count"] == result["forget_rate_count"] and point["forget_rate"] == result["forget_rate"]
    assert (point["forget_rate_ci95_low"], point["forget_rate_ci95_high"]) == (result["forget_rate_ci95_low"], result["forget_rate_ci95_high"])


def test_relearn_area_is_the_trapezoid_mean_with_the_wilson_envelope():
    from unlearnctl.metrics.intervals import rate_fields

    points = [{"step": s, **rate_fields("forget_rate", k, 50)} for s, k in ((0, 5), (10, 15), (40, 25))]
    found = relearn_area(list(reversed(points)))  # order does not matter
    assert found["relearn_area"] == pytest.approx((10 * (0.1 + 0.3) / 2 + 30 * (0.3 + 0.5) / 2) / 40)
    lows = [p["forget_rate_ci95_low"] for p in points]
    assert found["relearn_area_ci95_low"] == pytest.approx((10 * (lows[0] + lows[1]) / 2 + 30 * (lows[1] + lows[2]) / 2) / 40)
    assert found["relearn_area_steps"] == 40 and found["relearn_area_points"] == 3
    assert relearn_area([{"step": 0, "forget_rate": 0.2}]) == {"relearn_area": 0.2, "relearn_area_ci95_low": None,
                                                                "relearn_area_ci95_high": None, "relearn_area_steps": 0,
                                                                "relearn_area_points": 1}
    assert relearn_area([])["relearn_area"] is None


# --------------------------------------------------------------------------------------------- CLI


def test_cli_writes_checkpoint_and_curve_files(cli, unlearned, tmp_path, classifier_cache):
    out, curve_json, curve_csv = tmp_path / "attacked.safetensors", tmp_path / "curve.json", tmp_path / "curve.csv"
    result = cli("relearn-attack", "--model", unlearned.path, "--out", out, "--aux", "retain:0.5", "--steps", 4,
                 "--batch-size", 16, "--curve-every", 2, "--forget-class", "2", "--curve-samples", 8,
                 "--curve-sample-steps", 2, "--curve-json", curve_json, "--curve-csv", curve_csv,
                 "--device", "cpu", "--quiet", "--json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    data = json.loads(curve_json.read_text())
    assert data["schema"] == "unlearnctl.relearn-curve" and data["schema_version"] == 1
    assert {"model", "method", "attack", "aux", "every", "forget", "metric", "points", "forget_rate_before",
            "forget_rate_after", "relearn_gap"} <= set(data)
    assert [p["step"] for p in data["points"]] == [0, 2, 4]
    assert set(data["points"][0]) == {"step", "forget_rate", "num_samples", "forget_rate_count", "forget_rate_n",
                                      "forget_rate_ci95_low", "forget_rate_ci95_high"}
    assert data["model"]["sha256"] == unlearned.sha256 and data["metric"]["mode"] == "class"
    assert data["attacked_sha256"] == load_checkpoint(out).sha256
    assert data["budget"] == {"aux": "retain:0.5", "steps": 4, "lr": AttackConfig.lr, "batch_size": 16, "warmup_steps": 0,
                              "weight_decay": 0.0, "label_dropout": 0.1, "grad_clip": 1.0}
    assert data["relearn_area"] == pytest.approx(relearn_area(data["points"])["relearn_area"])
    assert data["relearn_area_ci95_low"] <= data["relearn_area"] <= data["relearn_area_ci95_high"]
    assert data["relearn_gap"] == pytest.approx(data["forget_rate_after"] - data["forget_rate_before"])
    rows = list(csv.DictReader(curve_csv.open()))
    assert tuple(rows[0]) == CURVE_CSV_COLUMNS
    assert [(int(r["step"]), float(r["forget_rate"])) for r in rows] == [
        (p["step"], pytest.approx(p["forget_rate"])) for p in data["points"]]
    attacked = load_checkpoint(out)
    entry = attacked.lineage[-1]
    assert entry["curve"]["points"] == data["points"] and entry["attack"]["aux"]["fingerprint"] == summary["aux_fingerprint"]
    assert summary["shared_images"] == 0 and summary["relearn_gap"] == pytest.approx(data["relearn_gap"])


@pytest.mark.parametrize("args, message", [
    (["--aux", "public"], "unknown auxiliary source 'public'"),
    (["--aux", "retain:2"], "retain fraction must be in"),
    (["--aux", "npz:/nonexistent.npz"], "does not exist"),
    (["--curve-json", "CURVE"], "add --curve-every"),
    (["--steps", "0"], "attack steps must be at least 1"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(cli, unlearned, tmp_path, args, message):
    out = tmp_path / "attacked.safetensors"
    args = [str(tmp_path / "c.json") if a == "CURVE" else a for a in args]
    result = cli("relearn-attack", "--model", unlearned.path, "--out", out, "--device", "cpu", "--quiet", *args)
    assert result.code == 2, result
    assert message in " ".join(result.err.split())
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_curve_needs_a_forget_set(cli, tiny_unconditional, tmp_path):
    result = cli("relearn-attack", "--model", tiny_unconditional.path, "--out", tmp_path / "a.safetensors",
                 "--curve-every", 2, "--steps", 2, "--device", "cpu", "--quiet")
    assert result.code == 2 and "--curve-every needs what to measure" in " ".join(result.err.split())


def test_cli_data_that_moved_needs_and_accepts_data(cli, unlearned, shapes_npz, tmp_path):
    import dataclasses
    import shutil

    moved = tmp_path / "moved.npz"
    shutil.copy(shapes_npz, moved)
    gone = dataclasses.replace(unlearned, data={**unlearned.data, "source": f"npz:{tmp_path / 'gone.npz'}"})
    model = save_checkpoint(gone, tmp_path / "gone.safetensors")
    args = ("relearn-attack", "--model", model, "--steps", 2, "--batch-size", 8, "--device", "cpu", "--quiet")
    result = cli(*args, "--out", tmp_path / "a.safetensors")
    assert result.code == 2 and "pass --data" in result.err
    result = cli(*args, "--out", tmp_path / "b.safetensors", "--data", f"npz:{moved}")
    assert result.code == 0, result
    assert load_checkpoint(tmp_path / "b.safetensors").lineage[-1]["attack"]["aux"]["shared_images"] == 0


def test_cli_curve_with_user_classifier_records_its_sha256(cli, unlearned, tmp_path, classifier_cache, shapes_split):
    import hashlib

    from unlearnctl.metrics.classifier import load_or_train_classifier

    user = tmp_path / "user.safetensors"
    own = load_or_train_classifier(shapes_split)
    user.write_bytes(own.path.read_bytes())
    args = ("relearn-attack", "--model", unlearned.path, "--aux", "retain:0.5", "--steps", 2, "--batch-size", 16,
            "--forget-class", "2", "--curve-samples", 8, "--curve-sample-steps", 2, "--device", "cpu", "--quiet")
    result = cli(*args, "--out", tmp_path / "a.safetensors", "--curve-every", 1, "--classifier", user,
                 "--curve-json", tmp_path / "c.json")
    assert result.code == 0, result
    metric = json.loads((tmp_path / "c.json").read_text())["metric"]
    assert metric["classifier"]["sha256"] == hashlib.sha256(user.read_bytes()).hexdigest()
    assert metric["classifier"]["kind"] == "user-classifier"
    assert cli(*args, "--out", tmp_path / "b.safetensors", "--classifier", user).code == 2
    pt = tmp_path / "c.pt"
    torch.save({}, pt)
    assert cli(*args, "--out", tmp_path / "b.safetensors", "--curve-every", 1, "--classifier", pt).code == 2
