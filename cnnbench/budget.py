"""A study's budget, checked before any job: training memory per variant, compute for the whole study.

Both come from each variant's layer table (cnnbench.models.geometry: output shape, parameters and MACs
of every layer), so they cost nothing and import no torch.

Memory of one training job (bytes; float32 everywhere, 4 bytes a value):
    weights + gradients + optimiser state   4 * params * (2 + slots)   slots: adam/adamw 2, sgd with
                                                                        momentum 1, plain sgd 0
    activations kept for backward           4 * batch_size * (input + every layer's output, flatten
                                            excluded since it is a view)
    evaluation (inference, EVAL_BATCH)      4 * 500 * 2 * the largest layer output
    the two above x MEMORY_SAFETY (2): backward's transient gradient buffers, convolution workspaces
    and allocator fragmentation
    + the data set on the device: 1 byte (uint8 copy) + 4 bytes (normalised copy) per pixel, test split
      included, + RUNTIME_BYTES for torch itself.
A variant whose estimate exceeds the device's memory is refused. The device's memory is
`execution.max_memory_gb` when set, else the host's RAM on the CPU, else (CUDA) the smallest GPU's
memory as nvidia-smi reports it on the host that runs Snakemake (torch is not imported at DAG time), else
DEFAULT_GPU_MEMORY_GB (a cluster's login node has no GPU to ask).

Compute of the study (multiply-accumulates):
    per run:  MACs/image * (3 * training images of a fold * epochs       forward + backward
                            + validation images of a fold * epochs       evaluation after every epoch
                            + test images)                               official test split, once
    runs:     folds * repeats * seeds, for every variant (the A/A control included)
Hours = MACs / the machine's assumed training throughput; more than `execution.max_hours` is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cnnbench.errors import ConfigError

if TYPE_CHECKING:
    from cnnbench.config import Study, VariantSpec

# Training throughput, in training MACs per second (a training image costs 3x its forward MACs).
# CPU, measured: in cnnbench's training loop the default study's baseline (1,031,744 forward MACs per
# image) trains at about 12,600 img/s with 1 thread on the reference machine (2-vCPU AMD EPYC, torch
# 2.14.1; `cnnbench loop-bench`, README): 12,600 * 1,031,744 * 3 = 3.9e10 MACs/s per core. Checked on a
# whole study: the default study (3.3e13 MACs with evaluation) comes out at 7.0 min on 2 cores; it took
# 7 min 2 s there (9 variants). On a slower 2-vCPU Intel Xeon VM the same study with its A/A control
# (10 variants, both counted here) spent 10.9 min of 2-core time in training jobs (13 min 18 s wall with
# timing and report), and a later run there took 11 min 20 s (9 min 10 s of training) against an
# estimate of 6 min, so the estimate can be ~2x optimistic on slower machines: max_hours is a guard
# against studies that are off by orders of magnitude, not a schedule. Small layers run below the
# machine's peak, so wider networks are over-estimated (width64, 16x the MACs, trains faster than 16x
# slower).
CPU_MACS_PER_S_PER_CORE = 3.9e10
# CUDA: one GPU at 1e12 training MACs/s, i.e. ResNet-20 on CIFAR-10 (40.8 M MACs) at ~8,000 img/s.
# Measured on one H200 (bf16, README "On a GPU"): ResNet-20 at 10,690 img/s in one job (1.3e12); the
# default study's small baseline is launch-bound, 24,400 img/s in one job (7.6e10) and 162,000 in 8
# concurrent jobs (5.0e11), so small studies take longer than this estimate says. Wide networks run far
# faster: config/cifar10-synthetic.yaml's timing job measured resnet20_wide and resnet18 at ~9,800 img/s
# in one job (1.6-1.9e13), so its estimate's training part (9.0 h of its 9.8 h; the rest is evaluation)
# is 3.7x the 2.4 h that the measured epoch times project for one job at a time.
CUDA_MACS_PER_S_PER_GPU = 1e12
# execution.jobs_per_gpu: auto = this many training jobs per GPU, fewer where the largest job's memory
# estimate does not fit that many times into the GPU's memory, where the workflow's cores do not give
# each job its execution.threads, or where the host's RAM does not hold that many CUDA processes.
# Measured on one H200 (16 cores) with the default study's baseline: 2, 4, 8 jobs gave 1.7-2.0,
# 3.2-3.6, 5.9-6.6x one job's img/s, and 16 jobs 1.07-1.12x the img/s of 8 in every comparison of two
# gpu-sweep runs on one machine (README); other networks and cards were not swept.
AUTO_JOBS_PER_GPU = 16
CUDA_JOB_HOST_BYTES = 2.5e9  # host RAM of one CUDA training process (torch, the CUDA context, the data):
# the cifar10-synthetic timing job peaked at 2.43 GB resident on the H200

BYTES_PER_VALUE = 4  # float32
MEMORY_SAFETY = 2.0  # on model state and activations (see the module docstring)
RUNTIME_BYTES = 700e6  # torch's own footprint: ~660 MB of a training process before any data (README)
EVAL_BATCH = 500  # cnnbench.train.EVAL_BATCH (not imported: that module imports torch)
DEFAULT_GPU_MEMORY_GB = 16.0  # the smallest common training card (T4, V100-16GB)
DEFAULT_MAX_HOURS = 24.0
TEST_SIZES = {"mnist": 10000, "fashion_mnist": 10000, "kmnist": 10000, "cifar10": 10000, "cifar100": 10000,
              "svhn": 26032}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Machine:
    """What the study will run on, as far as the budget is concerned."""

    device: str  # cpu | cuda
    workers: int  # CPU cores the workflow may use, or GPUs used at once
    memory_bytes: float  # memory one training job may use
    memory_source: str  # where that figure comes from, for messages
    macs_per_s: float  # training throughput of the whole machine
    cores: int = 0  # CPU cores the workflow may use (0: unknown), for jobs_per_gpu's auto
    host_memory_bytes: float = math.inf  # this host's RAM, for jobs_per_gpu's auto

    def describe(self) -> str:
        if self.device == "cpu":
            return (f"{self.workers} CPU core{'s' * (self.workers != 1)} at {_sci(CPU_MACS_PER_S_PER_CORE)} MACs/s "
                    "each (measured on the reference VM; slower CPUs take up to ~2x)")
        return f"{self.workers} GPU{'s' * (self.workers != 1)} at {_sci(CUDA_MACS_PER_S_PER_GPU)} MACs/s each (assumed)"


def host_ram_bytes() -> float:
    """Total RAM of this host: /proc/meminfo's MemTotal, else sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf  # unknown: refuse nothing on memory


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def detect_machine(execution: dict, cores: int | None = None, gpu_visible: bool | None = None,
                   gpu_memory_bytes: float | None = None) -> Machine:
    """The machine a study's `execution:` section will run on here. `cores`: what the workflow was given
    (Snakemake's --cores; default every core of this host). `gpu_memory_bytes`: this host's GPU memory
    (cnnbench.env.local_gpu_memory_bytes), if known; else a DEFAULT_GPU_MEMORY_GB card is assumed."""
    device = execution.get("device", "auto")
    if device == "auto":
        if gpu_visible is None:
            from cnnbench.env import nvidia_gpus_visible

            gpu_visible = nvidia_gpus_visible()
        device = "cuda" if gpu_visible else "cpu"
    if device == "cpu":
        workers = max(1, min(cores or host_cores(), host_cores()))
        memory, source = host_ram_bytes(), "this host's RAM"
        rate = CPU_MACS_PER_S_PER_CORE * workers
    else:
        workers = 1
        memory, source = ((gpu_memory_bytes, "this host's GPU (nvidia-smi)") if gpu_memory_bytes else
                          (DEFAULT_GPU_MEMORY_GB * 1e9, f"a GPU (assumed {DEFAULT_GPU_MEMORY_GB:g} GB)"))
        rate = CUDA_MACS_PER_S_PER_GPU
    cores = max(1, min(cores or host_cores(), host_cores()))
    return with_limits(Machine(device, workers, memory, source, rate, cores, host_ram_bytes()), execution)


# --- estimates -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VariantEstimate:
    name: str
    params: int
    macs_per_image: int
    state_bytes: float  # weights, gradients, optimiser state
    activation_bytes: float  # kept for backward at the batch size (or evaluation's peak, if larger)
    activation_bytes_per_image: float
    data_bytes: float
    memory_bytes: float  # the estimate: safety * (state + activations) + data + runtime
    macs: float  # the whole variant: every run, training and evaluation
    runs: int


@dataclass(frozen=True)
class StudyEstimate:
    study: str
    machine: Machine
    max_hours: float
    variants: dict[str, VariantEstimate] = field(default_factory=dict)
    jobs_per_gpu: int = 1  # execution.jobs_per_gpu resolved (auto: see AUTO_JOBS_PER_GPU); 1 off the GPU
    jobs_per_gpu_why: str = ""  # what held auto below AUTO_JOBS_PER_GPU, for the log

    @property
    def macs(self) -> float:
        return sum(v.macs for v in self.variants.values())

    @property
    def hours(self) -> float:
        return self.macs / self.machine.macs_per_s / 3600

    def peak(self) -> VariantEstimate:
        return max(self.variants.values(), key=lambda v: v.memory_bytes)

    def summary(self) -> str:
        """Two lines for the log of every workflow run (dry runs included)."""
        runs = max((v.runs for v in self.variants.values()), default=0)
        peak = self.peak()
        return (f"cnnbench: study {self.study!r}: {len(self.variants)} variants x {runs} runs, "
                f"{_sci(self.macs)} MACs in all (a rerun trains only what is missing), estimated "
                f"{_duration(self.hours)} of training on {self.machine.describe()}; "
                f"limit execution.max_hours = {self.max_hours:g} (training arithmetic only: job start-ups, data, "
                f"the timing job and the report come on top, a minute or more)\n"
                f"cnnbench: largest training job: {peak.name!r}, ~{_gb(peak.memory_bytes)} estimated of the "
                f"{_gb(self.machine.memory_bytes)} of {self.machine.memory_source}"
                + (f"; {self.jobs_per_gpu} training job{'s' * (self.jobs_per_gpu != 1)} per GPU{self.jobs_per_gpu_why}"
                   if self.machine.device == "cuda" else ""))


def estimate_variant(spec: VariantSpec, n_dev: int, n_test: int, folds: int, runs: int) -> VariantEstimate:
    rows = spec.layer_table()
    params = sum(r.params for r in rows)
    macs = sum(r.macs for r in rows)
    t = spec.train
    slots = 2 if t["optimizer"] in ("adam", "adamw") else int(t["momentum"] > 0)
    state = BYTES_PER_VALUE * params * (2 + slots)
    pixels = math.prod(spec.input_shape)
    per_image = BYTES_PER_VALUE * (pixels + sum(math.prod(r.out_shape) for r in rows if r.kind != "flatten"))
    largest = max([pixels, *(math.prod(r.out_shape) for r in rows)])
    activations = max(per_image * t["batch_size"], BYTES_PER_VALUE * EVAL_BATCH * 2 * largest)
    data = pixels * (n_dev + n_test) * (1 + BYTES_PER_VALUE)
    memory = MEMORY_SAFETY * (state + activations) + data + RUNTIME_BYTES
    n_val = n_dev / folds
    n_train = n_dev - n_val
    work = macs * (3 * n_train * t["epochs"] + n_val * t["epochs"] + n_test) * runs
    return VariantEstimate(spec.name, params, macs, state, activations, per_image, data, memory, work, runs)


def with_limits(machine: Machine, execution: dict) -> Machine:
    """The machine with the study's own `execution.max_memory_gb`, which wins over what was detected."""
    limit = execution.get("max_memory_gb")
    if limit is None:
        return machine
    return replace(machine, memory_bytes=float(limit) * 1e9, memory_source=f"execution.max_memory_gb ({limit:g} GB)")


def estimate_study(study: Study, machine: Machine) -> StudyEstimate:
    machine = with_limits(machine, study.execution)
    n_dev, n_test = data_sizes(study.data)
    folds = study.split["folds"]
    runs = folds * study.split["repeats"] * len(study.split["seeds"])
    variants = {name: estimate_variant(spec, n_dev, n_test, folds, runs) for name, spec in study.variants.items()}
    max_hours = float(study.execution.get("max_hours", DEFAULT_MAX_HOURS))
    return StudyEstimate(study.name, machine, max_hours, variants)


def check_study(study: Study, machine: Machine) -> StudyEstimate:
    """The estimate, or a `ConfigError` naming the knob to change: a variant that does not fit in the
    device's memory, or a study longer than `execution.max_hours`."""
    est = estimate_study(study, machine)
    machine = est.machine
    for v in est.variants.values():
        if v.memory_bytes > machine.memory_bytes:
            raise ConfigError(_memory_message(v, study.variants[v.name], machine))
    jobs, why = resolve_jobs_per_gpu(study.execution.get("jobs_per_gpu", "auto"), est,
                                     threads=int(study.execution.get("threads", 1)))
    est = replace(est, jobs_per_gpu=jobs, jobs_per_gpu_why=why)
    if est.hours > est.max_hours:
        top = sorted(est.variants.values(), key=lambda v: -v.macs)[:3]
        biggest = ", ".join(f"{v.name} {_duration(v.macs / machine.macs_per_s / 3600)}" for v in top)
        raise ConfigError(
            f"execution.max_hours: the study is estimated at {_duration(est.hours)} on {machine.describe()}: "
            f"{_sci(est.macs)} MACs over {len(est.variants)} variants x {max(v.runs for v in top)} runs (longest: "
            f"{biggest}), more than max_hours = {est.max_hours:g}; reduce epochs, folds, repeats, seeds or the "
            f"number of variants, run on a GPU, or set execution.max_hours: {math.ceil(est.hours * 1.2)} to accept it")
    return est


def resolve_jobs_per_gpu(setting: int | str, est: StudyEstimate, threads: int = 1) -> tuple[int, str]:
    """execution.jobs_per_gpu as a number, and what held `auto` down (for the log). `auto` is
    AUTO_JOBS_PER_GPU, or fewer where the largest job does not fit that many times into the GPU's memory,
    the workflow's cores do not give each job `threads`, or the host's RAM does not hold that many CUDA
    processes (CUDA_JOB_HOST_BYTES each). A number is kept if that many of the largest job fit into the
    GPU's memory, else refused with the number that fits. Off the GPU there is nothing to share: 1."""
    if est.machine.device != "cuda":
        return (1 if setting == "auto" else int(setting)), ""
    peak = est.peak()
    fit = max(1, int(est.machine.memory_bytes // peak.memory_bytes))
    if setting == "auto":
        m = est.machine
        caps = {f"the largest job's memory estimate fits {fit} times into {m.memory_source}": fit}
        if m.cores:
            caps[f"{m.cores} core{'s' * (m.cores != 1)} at execution.threads = {threads} each"] = max(1, m.cores // threads)
        if math.isfinite(m.host_memory_bytes):
            caps[f"this host's {_gb(m.host_memory_bytes)} of RAM at ~{_gb(CUDA_JOB_HOST_BYTES)} per CUDA process"] = max(
                1, int(m.host_memory_bytes // CUDA_JOB_HOST_BYTES))
        why, jobs = min(caps.items(), key=lambda kv: kv[1])
        if jobs >= AUTO_JOBS_PER_GPU:
            return AUTO_JOBS_PER_GPU, ""
        return jobs, f" (auto: {AUTO_JOBS_PER_GPU}, fewer here: {why})"
    if setting * peak.memory_bytes > est.machine.memory_bytes:
        raise ConfigError(
            f"execution.jobs_per_gpu: {setting} jobs of the largest variant ({peak.name!r}, ~{_gb(peak.memory_bytes)} "
            f"estimated each) need {_gb(setting * peak.memory_bytes)}, more than the {_gb(est.machine.memory_bytes)} "
            f"of {est.machine.memory_source}; set jobs_per_gpu: {fit} (or auto), or execution.max_memory_gb if "
            f"the GPU has more")
    return int(setting), ""


def _memory_message(v: VariantEstimate, spec: VariantSpec, machine: Machine) -> str:
    bs = spec.train["batch_size"]
    head = (f"estimated training memory {_gb(v.memory_bytes)} exceeds the {_gb(machine.memory_bytes)} of "
            f"{machine.memory_source}. Estimate: {v.params:,} parameters take {_gb(v.state_bytes)} with gradients and "
            f"optimiser state, activations at batch {bs} {_gb(v.activation_bytes)}, both x {MEMORY_SAFETY:g} for "
            f"safety; the data set on the device {_gb(v.data_bytes)}; torch {_gb(RUNTIME_BYTES)}. Fix")
    more = "or set execution.max_memory_gb if the device has more"
    parts = {"activations": MEMORY_SAFETY * v.activation_bytes, "state": MEMORY_SAFETY * v.state_bytes,
             "data": v.data_bytes, "runtime": RUNTIME_BYTES}
    biggest = max(parts, key=parts.get)
    if biggest == "runtime":
        return (f"execution.max_memory_gb: variant {spec.name!r}: {head}: torch alone needs about "
                f"{_gb(RUNTIME_BYTES)}, so raise execution.max_memory_gb")
    if biggest == "data":
        return (f"data.subset: variant {spec.name!r}: {head}: the data set dominates; use a smaller data.subset or "
                f"data.image_size, {more}")
    if biggest == "activations":
        return (f"variant {spec.name!r}, field 'batch_size': {head}: lower batch_size (activations take "
                f"{_gb(v.activation_bytes_per_image)} per image), width or the image size, {more}")
    return (f"variant {spec.name!r}, field 'width': {head}: the parameters dominate; lower width, widths or hidden, "
            f"{more}")


def data_sizes(data: dict) -> tuple[int, int]:
    """(images that k-fold splits, test images: official plus held out) of a `data:` section, without
    loading it; the same counts the loader will give (labels, then subset, then holdout)."""
    from cnnbench.catalog import complete_data, dataset_info, source_info

    info = dataset_info(data)
    if info.n_dev is not None:
        whole = dataset_info({**data, "holdout": None}).n_dev
        name = data["name"]
        if name == "synthetic":
            official = complete_data(data)["test_n"]
        elif name == "npz":
            from cnnbench.npzdata import inspect

            official = inspect(data["path"]).n_test
        else:
            official = TEST_SIZES.get(name, 0)
        return info.n_dev, official + whole - info.n_dev
    root = Path(data.get("root") or ".").expanduser()  # an image folder: counted
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir():
        n_dev, n_test = _count_images(train), _count_images(test)
    else:
        n_dev, n_test = _count_images(root), 0
    if data.get("labels"):  # their share, as if the classes were balanced
        n_dev = n_dev * len(data["labels"]) // max(source_info(data).num_classes, 1)
    if data.get("subset") is not None:
        n_dev = min(n_dev, data["subset"])
    if data.get("holdout"):
        from cnnbench.catalog import holdout_size

        held = holdout_size(n_dev, data["holdout"])
        n_dev, n_test = n_dev - held, n_test + held
    return n_dev, n_test


def _count_images(folder: Path) -> int:
    return sum(1 for _, _, files in os.walk(folder) for f in files if Path(f).suffix.lower() in _IMAGE_SUFFIXES)


def _sci(x: float) -> str:
    """3.9e10, not 3.9e+10."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{float(mantissa):.3g}e{int(exponent)}"


def _gb(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:,.1f} GB"
    if n >= 10e6:
        return f"{n / 1e6:,.0f} MB"
    return f"{n / 1e6:.2g} MB"


def _duration(hours: float) -> str:
    if hours < 1 / 3600:
        return "under 1 s"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours:,.0f} h ({hours / 24:,.0f} days)"
