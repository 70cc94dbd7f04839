"""Everything a report section may read, loaded once; expensive derived data is cached here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cnnbench.config import AA_CONTROL, VariantSpec, describe_changes
from cnnbench.data import ImageData, load_cache, load_fold
from cnnbench.errors import CnnbenchError
from cnnbench.io import read_json

MAX_FEATURED = 24  # variants shown in grid figures and full per-variant sections (see `featured`)


@dataclass
class ReportContext:
    title: str
    description: str
    baseline: str
    results_dir: Path
    data_path: Path
    splits_path: Path
    models_dir: Path
    out_dir: Path  # where index.html goes (links to the data files are relative to it)
    variant_descriptions: dict[str, str] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # variant -> what it is compared with
    chains: dict[str, list[str]] = field(default_factory=dict)  # variant -> its base chain (runs do not record it)
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, *, results_dir, data_path, splits_path, models_dir, baseline, title, out_dir, description="",
             variant_descriptions=None, references=None, chains=None) -> ReportContext:
        ctx = cls(title, description, baseline, Path(results_dir), Path(data_path), Path(splits_path),
                  Path(models_dir), Path(out_dir), variant_descriptions or {}, references or {}, chains or {})
        for name in ("runs.parquet", "specs.json"):
            if not (ctx.results_dir / name).exists():
                raise CnnbenchError(f"{ctx.results_dir / name}: not found; run `cnnbench collect` (the workflow does) "
                                    "before the report")
        if baseline not in ctx.specs:
            raise CnnbenchError(f"baseline {baseline!r} has no runs in {results_dir}; variants: {', '.join(ctx.specs)}")
        return ctx

    # --- tables written by `collect` ---------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """A tidy table written by `collect`, read once per report (sections share it; do not modify)."""
        if name not in self._tables:
            self._tables[name] = pd.read_parquet(self.results_dir / f"{name}.parquet")
        return self._tables[name]

    @cached_property
    def runs(self) -> pd.DataFrame:
        return self.table("runs")

    @cached_property
    def epochs(self) -> pd.DataFrame:
        return self.table("epochs")

    @cached_property
    def specs(self) -> dict[str, VariantSpec]:
        """Resolved specs, in config order, with their base chains from the study (a run records only what its
        numbers depend on; the ladder and the provenance table need the chain)."""
        return {k: VariantSpec.from_dict({**v, "chain": self.chains.get(k, v.get("chain", ()))})
                for k, v in read_json(self.results_dir / "specs.json").items()}

    @property
    def variants(self) -> list[str]:
        """Baseline first, then the config's order (the A/A control, if any, last)."""
        return [self.baseline] + [v for v in self.specs if v not in (self.baseline, AA_CONTROL)] + \
            ([AA_CONTROL] if self.has_aa_control else [])

    @property
    def design_variants(self) -> list[str]:
        """The variants whose effects the report tests: all but the baseline and the A/A control."""
        return [v for v in self.variants if v not in (self.baseline, AA_CONTROL)]

    @property
    def has_aa_control(self) -> bool:
        return AA_CONTROL in self.specs

    @property
    def data_name(self) -> str:
        """The data set's name in the config (every variant of a study shares its data)."""
        return str(self.specs[self.baseline].data.get("name", ""))

    @cached_property
    def featured(self) -> list[str]:
        """The variants that get a panel in grid figures and a full section: all of them up to
        MAX_FEATURED; in a larger study the baseline, the comparisons with the smallest adjusted p-values
        (then the largest |difference|) and the A/A control, so the page stays readable at 100 variants."""
        design = self.design_variants
        if len(design) + 1 <= MAX_FEATURED:
            return self.variants
        cmp = self.comparison.assign(size=lambda d: -d["diff"].abs()).sort_values(["p_holm", "size"])
        keep = set(cmp.index[: MAX_FEATURED - 1])
        return [self.baseline] + [v for v in design if v in keep] + ([AA_CONTROL] if self.has_aa_control else [])

    def featured_note(self, what: str) -> str:
        n = len(self.variants)
        if len(self.featured) == n:
            return ""
        return (f' <span class="note">{what} for {len(self.featured)} of the {n} variants: the baseline, the '
                "comparisons with the smallest adjusted p-values and the A/A control; every run's numbers are in "
                "the tables linked under 'Data behind this report'.</span>")

    def reference(self, variant: str) -> str:
        return self.references.get(variant, self.baseline)

    def changes(self, variant: str) -> list[str]:
        """What a variant changes relative to the variant it is compared with."""
        return describe_changes(self.specs[self.reference(variant)], self.specs[variant])

    def link(self, path: Path) -> str:
        """A link target relative to the report, so the page works wherever the repo is."""
        return Path(os.path.relpath(path, self.out_dir)).as_posix()

    # --- derived ----------------------------------------------------------------------------------
    @cached_property
    def comparison(self) -> pd.DataFrame:
        """Every design variant against its reference: one Holm family, the report's only verdicts."""
        from cnnbench.stats import compare

        return compare(self.runs, self.baseline, "val_acc", variants=self.design_variants,
                       references=self.references).set_index("variant")

    @cached_property
    def aa(self):
        """The A/A control against the baseline (a `stats.Comparison`), or None without one."""
        from cnnbench.stats import compare_pair

        if not self.has_aa_control:
            return None
        return compare_pair(self.runs, self.baseline, AA_CONTROL, "val_acc", corrected=False)

    @cached_property
    def per_example(self) -> pd.DataFrame:
        from cnnbench.report.per_example import mcnemar_table

        return mcnemar_table(self)

    @cached_property
    def timing(self) -> pd.DataFrame:
        """Speed measured alone, one row per variant (the A/A control shares the baseline's)."""
        path = self.results_dir / "timing.parquet"
        t = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["variant"])
        t = t.set_index("variant")
        if self.has_aa_control and self.baseline in t.index:
            t.loc[AA_CONTROL] = t.loc[self.baseline]
        return t

    def per_variant(self, *metrics: str) -> pd.DataFrame:
        """One row per variant, one column per metric of cnnbench.metrics.METRICS (and its spread)."""
        from cnnbench.metrics import per_variant

        return per_variant(self.runs, self.timing, list(metrics), self.variants)

    @cached_property
    def devices(self) -> list[str]:
        names = self.timing["device_name"] if "device_name" in self.timing else self.runs["device_name"]
        return sorted(set(names.astype(str)))

    @cached_property
    def images(self) -> ImageData:
        return load_cache(self.data_path)

    def fold(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        return load_fold(self.splits_path, fold, self.images.y)

    def model(self, variant: str):
        """The variant's saved model (its first run), on the CPU in eval mode, with the normalisation its
        fold used; None if the weights are missing."""
        import torch

        from cnnbench.images import Images

        path = self.models_dir / f"{variant}.pt"
        if not path.exists():
            path = self.models_dir / f"{variant}.g0.pt"  # several training jobs per variant: the first's
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        spec = VariantSpec.from_dict(saved["spec"])
        model = spec.network()
        model.load_state_dict(saved["state_dict"])
        model.eval()
        train_idx, val_idx = self.fold(saved["fold"])
        x = torch.from_numpy(self.images.x)
        mean, std = Images.stats(x[torch.from_numpy(train_idx)])
        val = Images(x[torch.from_numpy(val_idx)], mean, std)
        return model, val, val_idx, saved
