"""The ablation ladder (chains of variants) and the leave-one-out generator `cnnbench ablate`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from cnnbench.cli import main
from cnnbench.config import load_study
from cnnbench.report.ladder import ladder_table, ladders
from cnnbench.stats import compare
from tests.helpers import tiny_study, write_yaml

CHAIN = {"baseline": {"base": "cnn"}, "bn": {"base": "baseline", "bn": True},
         "bn_drop": {"base": "bn", "dropout": 0.3}, "bn_drop_gap": {"base": "bn_drop", "head": "gap"},
         "wide": {"base": "baseline", "width": 32}}


def test_a_chain_of_variants_is_a_ladder_and_a_star_is_not():
    study = load_study(tiny_study(variants=CHAIN))
    assert ladders(study.variants, study.references) == [["baseline", "bn", "bn_drop", "bn_drop_gap"]]
    star = load_study(tiny_study())  # batchnorm and dropout both built on the baseline
    assert ladders(star.variants, star.references) == []
    # a rung compared with something other than the rung below breaks the chain there
    redirected = load_study(tiny_study(variants={**CHAIN, "bn_drop": {**CHAIN["bn_drop"], "compare_to": "baseline"}}))
    assert ladders(redirected.variants, redirected.references) == []


def _runs(effects: dict[str, float], folds: int = 6) -> pd.DataFrame:
    """Accuracies with a large per-fold effect shared by every variant: only pairing removes it."""
    rng = np.random.default_rng(0)
    fold_effect = rng.normal(0, 0.05, folds)
    rows = []
    for v, e in effects.items():
        for f in range(folds):
            rows.append({"variant": v, "fold": f, "seed": 0, "val_acc": 0.8 + e + fold_effect[f] + rng.normal(0, 0.002),
                         "data_n_train": 800, "data_n_val": 200, "status": "ok", "study": "s", "spec_hash": v})
    return pd.DataFrame(rows)


def test_ladder_rungs_are_paired_on_the_same_runs():
    path = ["baseline", "bn", "bn_drop"]
    runs = _runs({"baseline": 0.0, "bn": 0.02, "bn_drop": 0.03})
    comparison = compare(runs, "baseline", references={"bn": "baseline", "bn_drop": "bn"}).set_index("variant")
    table = ladder_table(runs, path, comparison).set_index("variant")
    wide = runs.pivot(index="fold", columns="variant", values="val_acc")
    assert table.loc["bn_drop", "step"] == pytest.approx((wide.bn_drop - wide.bn).mean())
    assert table.loc["bn_drop", "total"] == pytest.approx((wide.bn_drop - wide.baseline).mean())
    # paired: the shared fold effect (sd 5 pts) cancels, so the 1-point step's CI is narrow
    assert table.loc["bn_drop", "step_high"] - table.loc["bn_drop", "step_low"] < 0.01
    assert table.loc["bn", "p_holm"] == comparison.loc["bn", "p_holm"]


def test_ablate_writes_one_leave_one_out_variant_per_choice(tmp_path, capsys):
    full = {"baseline": {"base": "cnn"}, "full": {"base": "baseline", "bn": True, "dropout": 0.3,
                                                  "augment": {"shift": 1}, "weight_decay": 1e-3}}
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study(variants=full))
    out = tmp_path / "ablation.yaml"
    assert main(["ablate", "full", "--remove", "bn,dropout,augment.shift,weight_decay", "--config", str(cfg),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 leave-one-out variant(s)" in printed and "join the report's one Holm family" in printed
    study = load_study(out)
    assert study.variants["full_no_bn"].model["bn"] is False
    assert study.variants["full_no_dropout"].model["dropout"] == 0.0
    assert study.variants["full_no_augment_shift"].train["augment"]["shift"] == 0
    assert study.variants["full_no_weight_decay"].train["weight_decay"] == 0.0
    for name in ("full_no_bn", "full_no_dropout", "full_no_augment_shift", "full_no_weight_decay"):
        assert study.references[name] == "full"
        others = {k: v for k, v in study.variants[name].model.items() if k not in ("bn", "dropout")}
        assert others == {k: v for k, v in study.variants["full"].model.items() if k not in ("bn", "dropout")}
    assert yaml.safe_load(out.read_text())["variants"]["full"] == full["full"]  # the original is kept
    assert "its comments are not carried over" in out.read_text()  # said, not silently dropped


@pytest.mark.parametrize("remove, message", [("colour", "'colour' is not a knob"),
                                             ("bn,widht", "'widht' is not a knob of variant 'batchnorm' (did you mean 'width'?)"),
                                             ("shortcut", "'shortcut' is already off"),
                                             ("lr", "'lr' is already off or at its default"),  # the study's lr
                                             ("lr.flip", "only augment has sub-knobs"),
                                             ("augment.flipp", "only augment has sub-knobs (flip, "),
                                             ("kwargs", "an external network's setting"),
                                             ("", "no knob given"), (" , ", "no knob given"),
                                             ("bn,bn", "bn given more than once; name each knob once")])
def test_ablate_refuses_what_it_cannot_remove(tmp_path, capsys, remove, message):
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study())
    assert main(["ablate", "batchnorm", "--remove", remove, "--config", str(cfg), "--out", str(tmp_path / "o.yaml")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.yaml").exists()


def test_ablate_never_overwrites_without_being_asked_and_never_the_input(tmp_path, capsys, monkeypatch):
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study())
    before = cfg.read_text()
    assert main(["ablate", "batchnorm", "--remove", "bn", "--config", str(cfg), "--out", str(cfg), "--force"]) == 2
    assert "is the input config" in capsys.readouterr().err and cfg.read_text() == before
    out = tmp_path / "o.yaml"
    out.write_text("# mine\n")
    assert main(["ablate", "batchnorm", "--remove", "bn", "--config", str(cfg), "--out", str(out)]) == 2
    assert "exists; choose a new file, or add --force" in capsys.readouterr().err and out.read_text() == "# mine\n"
    monkeypatch.chdir(tmp_path)  # not the checkout: the hint says where to run it, with the full path
    assert main(["ablate", "batchnorm", "--remove", "bn", "--config", str(cfg), "--out", "o.yaml", "--force"]) == 0
    assert f"(from the cnnbench checkout): snakemake --cores all --configfile {out}" in capsys.readouterr().out
    assert "batchnorm_no_bn" in load_study(out).variants and sorted(p.name for p in tmp_path.iterdir()) == ["o.yaml", "study.yaml"]


def test_ablate_takes_knobs_whose_default_is_none_back_to_it(tmp_path, capsys):
    """width: none keeps a preset's widths, labels_per_class: none trains on every label; a training knob
    goes back to the study's own protocol value."""
    variants = {"baseline": {"base": "cnn"},
                "full": {"base": "resnet20", "width": 8, "labels_per_class": 10, "lr": 0.2}}
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study(variants=variants))
    out = tmp_path / "o.yaml"
    assert main(["ablate", "full", "--remove", "width,labels_per_class,lr", "--config", str(cfg), "--out", str(out)]) == 0
    study = load_study(out)
    assert study.variants["full_no_width"].model["width"] is None
    assert study.variants["full_no_labels_per_class"].train["labels_per_class"] is None
    assert study.variants["full_no_lr"].train["lr"] == 0.05  # tiny_study's protocol lr


def test_an_ablation_that_would_be_invalid_leaves_nothing_behind(tmp_path, capsys):
    variants = {"baseline": {"base": "cnn"}, "full": {"base": "baseline", "block": "bottleneck", "bottleneck_ratio": 2}}
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study(variants=variants))
    out = tmp_path / "o.yaml"
    out.write_text("# mine\n")
    assert main(["ablate", "full", "--remove", "block", "--config", str(cfg), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "would not be valid" in err and "bottleneck_ratio" in err and str(out) in err and ".draft" not in err
    assert out.read_text() == "# mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["o.yaml", "study.yaml"]
    assert main(["ablate", "full", "--remove", "block", "--config", str(cfg), "--out", str(cfg)]) == 2
    assert "is the input config" in capsys.readouterr().err  # not "exists; add --force"


def test_the_draft_goes_whatever_stops_the_validation(tmp_path, monkeypatch):
    """Not only a config error: an interrupt or any other failure while the draft is checked."""
    import cnnbench.ablate as ablate_module

    cfg = write_yaml(tmp_path / "study.yaml", tiny_study())
    real = ablate_module.load_study

    def interrupted(path, *a, **kw):
        if str(path).endswith(".draft"):
            raise KeyboardInterrupt
        return real(path, *a, **kw)
    monkeypatch.setattr(ablate_module, "load_study", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablate_module.ablate(cfg, "batchnorm", ["bn"], tmp_path / "o.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
