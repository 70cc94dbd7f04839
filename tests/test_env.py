"""What the workflow asks of the installed Snakemake."""

from cnnbench.env import snakemake_takes_priority_functions


def test_a_priority_function_is_given_only_to_a_snakemake_that_evaluates_it():
    # 9.15 stopped the H200 check's timed study with "Priority values have to be numeric"
    assert not snakemake_takes_priority_functions("9.15.0") and not snakemake_takes_priority_functions("9.16.0")
    assert snakemake_takes_priority_functions("9.17.0") and snakemake_takes_priority_functions("9.27.1")
    assert snakemake_takes_priority_functions("10.0.0")
