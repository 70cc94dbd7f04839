"""Everything a report section may read, loaded once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from cnnbench.config import VariantSpec, describe_changes
from cnnbench.data import ImageData, load_cache
from cnnbench.errors import CnnbenchError
from cnnbench.io import read_json


@dataclass
class ReportContext:
    title: str
    description: str
    baseline: str
    runs: pd.DataFrame  # one row per run
    epochs: pd.DataFrame  # one row per run and epoch
    specs: dict[str, VariantSpec]  # in config order
    variant_descriptions: dict[str, str]
    results_dir: Path
    data_path: Path
    splits_path: Path
    models_dir: Path
    cache: dict = field(default_factory=dict)  # for sections that share an expensive computation

    @classmethod
    def load(cls, *, results_dir, data_path, splits_path, models_dir, baseline, title, description="",
             variant_descriptions=None):
        results_dir = Path(results_dir)
        specs = {k: VariantSpec.from_dict(v) for k, v in read_json(results_dir / "specs.json").items()}
        if baseline not in specs:
            raise CnnbenchError(f"baseline {baseline!r} has no runs in {results_dir}; variants: {', '.join(specs)}")
        return cls(title, description, baseline, pd.read_parquet(results_dir / "runs.parquet"),
                   pd.read_parquet(results_dir / "epochs.parquet"), specs, variant_descriptions or {},
                   results_dir, Path(data_path),
                   Path(splits_path), Path(models_dir))

    @property
    def variants(self) -> list[str]:
        """Baseline first, then the config's order."""
        return [self.baseline] + [v for v in self.specs if v != self.baseline]

    def changes(self, variant: str) -> list[str]:
        return describe_changes(self.specs[self.baseline], self.specs[variant])

    @cached_property
    def images(self) -> ImageData:
        return load_cache(self.data_path)
