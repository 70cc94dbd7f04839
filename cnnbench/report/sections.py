"""The report's sections, in order. Each is a function `(ReportContext) -> Section | None` (None: it does
not apply to this study); adding a section is writing one function in the module of its topic and listing
it here."""

from __future__ import annotations

from collections.abc import Callable


def report_sections() -> list[Callable]:
    from cnnbench.report.accuracy import accuracy_plot, effects, error_edfs, learning_curves
    from cnnbench.report.augmentation import augmentation_examples
    from cnnbench.report.calibration import aa_control
    from cnnbench.report.cost import cost_vs_accuracy, measurements
    from cnnbench.report.ensembles import ensembles
    from cnnbench.report.invariance import translation
    from cnnbench.report.ladder import ladder_section
    from cnnbench.report.norms import weight_norms
    from cnnbench.report.overview import findings, summary_table
    from cnnbench.report.per_example import per_example
    from cnnbench.report.provenance import data_files, environment
    from cnnbench.report.ranking import ranking
    from cnnbench.report.silent import silent_kernels
    from cnnbench.report.transfer import transfer
    from cnnbench.report.variant import variant_sections

    return [findings, aa_control, summary_table, accuracy_plot, effects, ladder_section, transfer, ensembles,
            per_example, cost_vs_accuracy, learning_curves, error_edfs, translation, weight_norms, silent_kernels,
            augmentation_examples, ranking, measurements, variant_sections, environment, data_files]
