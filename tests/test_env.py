"""What the workflow asks of the host before any job: its Snakemake, its GPU's memory."""

import os
import stat

from cnnbench import budget as B
from cnnbench.env import local_gpu_memory_bytes, snakemake_takes_priority_functions


def test_a_priority_function_is_given_only_to_a_snakemake_that_evaluates_it():
    # 9.15 stopped the H200 check's timed study with "Priority values have to be numeric" (a dry run of
    # the workflow under 9.15 and 9.16 failed so; 9.17 is the first release with Rule.expand_priority)
    assert not snakemake_takes_priority_functions("9.15.0") and not snakemake_takes_priority_functions("9.16.0")
    assert snakemake_takes_priority_functions("9.17.0") and snakemake_takes_priority_functions("10.0.0")
    from snakemake.rules import Rule  # the installed one: the rule agrees with what it can do

    assert snakemake_takes_priority_functions() == hasattr(Rule, "expand_priority")


def _fake_nvidia_smi(folder, body: str, monkeypatch) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_the_budget_uses_the_smallest_local_gpus_memory_where_nvidia_smi_tells(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "printf '143771\\n81559\\n'", monkeypatch)  # an H200 and an H100
    memory = local_gpu_memory_bytes()
    assert memory == 81559 * 2**20
    machine = B.detect_machine({"device": "cuda"}, gpu_memory_bytes=memory)
    assert machine.memory_bytes == memory and "nvidia-smi" in machine.memory_source
    assert B.detect_machine({"device": "cuda", "max_memory_gb": 40}, gpu_memory_bytes=memory).memory_bytes == 40e9


def test_without_an_answer_from_nvidia_smi_a_16_gb_card_is_assumed(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9", monkeypatch)
    assert local_gpu_memory_bytes() is None
    assert B.detect_machine({"device": "cuda"}).memory_bytes == B.DEFAULT_GPU_MEMORY_GB * 1e9
