"""The evaluation entry point: schema, sample plan, forget-set discovery, registry."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnctl.data import ForgetSpec, resolve_forget
from unlearnctl.errors import BadInputError
from unlearnctl.metrics import METRICS, get_metric, metric_names, register_metric, result_keys
from unlearnctl.metrics.evaluate import SCHEMA, EvalConfig, evaluate, recorded_forget_spec, run_evaluation
from unlearnctl.metrics.membership import AuditConfig

FAST_AUDIT = AuditConfig(repeats=1, timesteps=(50, 200))
PROVENANCE_KEYS = {"created", "model", "data", "forget", "sampler", "extractor", "classifier", "metrics_run", "skipped",
                   "details", "config", "device", "timing_s", "versions"}


def fast(**overrides) -> EvalConfig:
    return EvalConfig(**{"num_samples": 80, "steps": 8, "audit": FAST_AUDIT, "kid_subsets": 10, **overrides})


def test_registry_lists_groups_and_validates_names():
    assert metric_names() == ["quality", "forget", "retain", "membership", "clip"]
    keys = result_keys()
    assert {"fid", "kid", "precision", "recall", "forget_rate", "retain_accuracy", "membership_auc",
            "membership_epsilon_lb", "membership_loss_ratio"} <= keys.keys()
    with pytest.raises(BadInputError, match="choose from quality, forget, retain, membership, clip"):
        get_metric("qualty")
    with pytest.raises(ValueError, match="already registered"):
        register_metric("quality", keys={"other": "x"})
    with pytest.raises(ValueError, match="redefines"):
        register_metric("fidelity2", keys={"fid": "x"})
    assert "fidelity2" not in METRICS


def test_class_forgetting_result_has_every_key(tiny_conditional):
    result = evaluate(tiny_conditional, ForgetSpec(classes=("3",)), fast())
    assert result["schema"] == SCHEMA
    assert set(result_keys()) | {"schema", "num_samples", "num_retain_samples", "num_forget_samples", "provenance"} == set(result)
    assert set(result["provenance"]) == PROVENANCE_KEYS
    # 80 samples balanced over 4 classes; class 3 is the forget condition
    assert (result["num_samples"], result["num_retain_samples"], result["num_forget_samples"]) == (80, 60, 20)
    for key in ("fid", "kid", "precision", "recall", "forget_rate", "retain_accuracy", "membership_auc"):
        assert isinstance(result[key], float), key
    assert result["forget_mode"] == "class" and result["forget_threshold"] is None
    assert result["forget_rate"] > 0.5  # the tiny model was trained on class 3: it still draws crosses
    prov = result["provenance"]
    assert prov["forget"]["source"] == "given" and prov["forget"]["class_ids"] == [3]
    assert prov["model"]["sha256"] == tiny_conditional.sha256 and prov["extractor"]["weights_sha256"]
    assert prov["sampler"] == {"name": "ddim", "steps": 8, "guidance": 1.0, "seed": 0, "batch_size": 1000, "num_samples": 80}
    assert {"sampling_s", "scoring_s", "total_s"} <= prov["timing_s"].keys()
    json.dumps(result)  # the whole result is plain JSON


def test_same_seed_same_result(tiny_conditional):
    config = fast(metrics=("quality", "retain"), num_samples=40)
    first, second = evaluate(tiny_conditional, config=config), evaluate(tiny_conditional, config=config)
    assert first["fid"] == second["fid"] and first["retain_accuracy"] == second["retain_accuracy"]


def test_forget_set_comes_from_the_lineage(tiny_conditional):
    from unlearnctl.checkpoint import lineage_entry
    from unlearnctl.data import load_recorded_data

    forget = resolve_forget(ForgetSpec(classes=("1",)), load_recorded_data(tiny_conditional.data))
    unlearned = tiny_conditional.derive(dict(tiny_conditional.state_dict),
                                        lineage_entry("unlearn", {"method": "test"}, 0, 0.0, forget=forget.describe()))
    assert recorded_forget_spec(tiny_conditional) is None
    assert recorded_forget_spec(unlearned) == ForgetSpec(classes=("1",))
    result = evaluate(unlearned, config=fast(metrics=("forget",)))
    assert result["provenance"]["forget"]["source"] == "lineage" and result["forget_rate"] is not None


def test_without_forget_set_only_quality_and_retain(tiny_conditional):
    result = evaluate(tiny_conditional, config=fast())
    assert result["provenance"]["metrics_run"] == ["quality", "retain"]
    assert result["forget_rate"] is None and result["membership_auc"] is None
    assert "no forget set" in result["provenance"]["skipped"]["forget"]
    assert result["num_retain_samples"] == 80


def test_unconditional_data_forgetting(tiny_unconditional):
    result = evaluate(tiny_unconditional, ForgetSpec(indices=(0, 5, 50)), fast(num_samples=60))
    assert result["forget_mode"] == "data" and result["forget_threshold"] > 0
    assert result["num_forget_samples"] == result["num_retain_samples"] == 60  # every sample feeds every metric
    assert result["retain_accuracy"] is None and "unconditional" in result["provenance"]["skipped"]["retain"]
    assert result["membership_members"] == 3


def test_requested_metric_that_cannot_run_is_bad_input(tiny_unconditional, tiny_conditional):
    with pytest.raises(BadInputError, match="'retain' cannot be computed here: unconditional"):
        evaluate(tiny_unconditional, config=fast(metrics=("retain",)))
    with pytest.raises(BadInputError, match="guidance needs a class-conditional model"):
        evaluate(tiny_unconditional, config=fast(guidance=3.0))
    with pytest.raises(BadInputError, match="below the 4 conditions"):
        evaluate(tiny_conditional, config=fast(num_samples=3))
    with pytest.raises(BadInputError, match="unknown feature extractor"):
        EvalConfig(feature_extractor="vgg16")


def test_gate_names_are_checked_before_sampling(tiny_conditional, monkeypatch):
    import unlearnctl.diffusion as diffusion

    monkeypatch.setattr(diffusion, "sample_images", lambda *a, **k: pytest.fail("sampled before validating gates"))
    with pytest.raises(BadInputError, match="unknown metric 'forget_rate'"):  # no forget set: forget_rate not measured
        run_evaluation(tiny_conditional, config=fast(), gates=["forget_rate<=0.05"])


def test_grids_and_saved_samples(tiny_conditional, tmp_path):
    evaluation = run_evaluation(tiny_conditional, ForgetSpec(classes=("0",)), fast(metrics=("forget",)))
    retain_grid, forget_grid = evaluation.grids(tmp_path / "grid.png")
    assert retain_grid.is_file() and forget_grid.name == "grid-forget.png" and forget_grid.is_file()
    folder = evaluation.save_samples(tmp_path / "samples")
    assert len(list((folder / "forget").glob("*.png"))) == evaluation.result["num_forget_samples"] == 20
    import numpy as np

    saved = np.load(folder / "samples.npz")
    assert saved["images"].shape == (80, 8, 8, 1) and torch.equal(torch.from_numpy(saved["labels"]), evaluation.samples.labels)


def test_docs_document_every_result_key():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for key in [*result_keys(), "num_samples", "num_retain_samples", "num_forget_samples", "provenance", *PROVENANCE_KEYS]:
        assert f"`{key}`" in text, key


def test_membership_only_generates_nothing(tiny_conditional, monkeypatch):
    import unlearnctl.diffusion as diffusion

    monkeypatch.setattr(diffusion, "sample_images", lambda *a, **k: pytest.fail("the audit alone needs no samples"))
    result = evaluate(tiny_conditional, ForgetSpec(classes=("2",)), fast(metrics=("membership",), num_samples=1))
    assert result["num_samples"] == 0 and isinstance(result["membership_auc"], float)


RATES = ("forget_rate", "forget_confident_rate", "retain_accuracy")


def test_every_figure_carries_its_interval(tiny_conditional):
    result = evaluate(tiny_conditional, ForgetSpec(classes=("3",)), fast())
    for key in RATES:
        count, n = result[f"{key}_count"], result[f"{key}_n"]
        assert isinstance(count, int) and isinstance(n, int) and result[key] == count / n, key
        assert result[f"{key}_ci95_low"] <= result[key] <= result[f"{key}_ci95_high"], key
    assert result["forget_rate_n"] == result["num_forget_samples"] == 20
    assert result["retain_accuracy_n"] == result["num_retain_samples"] == 60
    assert result["forget_confident_rate_count"] <= result["forget_rate_count"]
    assert 0 <= result["forget_mean_probability"] <= 1
    for key in ("fid", "kid", "membership_auc", "membership_balanced_accuracy"):
        assert result[f"{key}_ci95_low"] <= result[key] <= result[f"{key}_ci95_high"], key
    assert result["fid_n"] == result["kid_n"] == 60
    # the shapes data hold a dozen held-out crosses: TPR at 1% FPR is unsupported, not a number
    assert result["membership_nonmembers"] < 100
    assert result["membership_tpr_at_1pct_fpr"] is None and "non-members" in result["membership_tpr_at_1pct_fpr_unsupported_reason"]
    assert result["membership_epsilon_lb_max"] >= (result["membership_epsilon_lb"] or 0)
    size = result["provenance"]["details"]["membership"]["size"]
    assert size["members"] == result["membership_members"] and size["repeats"] == 1 and size["timesteps"] == 2
    assert size["unet_image_passes"] == (size["members"] + size["nonmembers"]) * 2


def test_the_audit_honours_the_evaluation_budget(tiny_conditional):
    small = evaluate(tiny_conditional, ForgetSpec(classes=("2",)), fast(metrics=("membership",), num_samples=6))
    assert small["membership_members"] == 6 and small["membership_nonmembers"] <= 6
    assert small["provenance"]["details"]["membership"]["size"]["max_images"] == 6
    capped = evaluate(tiny_conditional, ForgetSpec(classes=("2",)),
                      fast(metrics=("membership",), audit=AuditConfig(repeats=1, timesteps=(50,), max_images=4)))
    assert capped["membership_members"] == 4 and capped["provenance"]["details"]["membership"]["size"]["max_images"] == 4


def test_sample_batch_comes_from_the_model_size():
    from unlearnctl.sampling import auto_batch_size

    class Sized(torch.nn.Module):
        def __init__(self, parameters: int):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(parameters, device="meta"))

    assert auto_batch_size(Sized(35_700_000), 32) == 273  # the CIFAR-10 DDPM: 1000 peaked at 8.9 GB RSS
    assert auto_batch_size(Sized(700_000), 28) == 1000  # the small preset keeps the old default
    assert auto_batch_size(Sized(10 ** 12), 64) == 1


def test_params_digest_ignores_seeds_and_what_a_run_found_but_not_what_it_was_asked():
    """SalUn's unlearning seeds find different salient-weight counts (``prepared``); compare must still see one
    recipe, while a changed parameter is another recipe."""
    from unlearnctl.metrics.evaluate import params_digest

    def salun(seed: int, salient: int, lr: float = 5e-4) -> dict:
        return {"method_params": {"saliency_percent": 50.0}, "prepared": {"salient_weights": salient}, "lr": lr, "seed": seed}

    assert params_digest(salun(0, 351377)) == params_digest(salun(1, 351290))
    assert params_digest(salun(0, 351377)) != params_digest(salun(0, 351377, lr=2e-4))
