"""Translation probe: how a trained network responds to shifted images.

Three measurements, for any model with a `features` nn.Sequential (its children are the *stages*) and a
`head` (cnnbench.models.build.ConvNet, or any module laid out the same way):

* **accuracy vs shift** (`shift_accuracy`): validation accuracy when every image is shifted by s pixels
  along *both* axes, s = 0..k, in one of the four diagonal directions (+s, +s), (+s, -s), (-s, +s),
  (-s, -s) (`DIRECTIONS`; dx right, dy down): image i of the set goes in direction i mod 4, so each
  direction gets a quarter of the images (no direction is favoured, e.g. for digits that sit
  off-centre) and a shift costs one forward pass over the set. The pixels that enter are black (zero
  intensity): the images are normalised, so the fill is the *normalised* value of 0, -mean/std per
  channel (`black_fill`), not 0.
* **equivariance error per stage** (`equivariance_errors`): shift the input by s (the same diagonal
  directions, image i in direction i mod 4) and compare the stage's feature map f(T_s x) with the
  feature map of the unshifted input shifted by s / r, T_{s/r} f(x), where r is the stage's cumulative
  stride relative to the input
  (every strided conv and pooling layer up to and including the stage). When r does not divide s no
  integer shift of the map can match: the error is then that of the *best* achievable comparison,
  the smaller of the errors at floor(s/r) and ceil(s/r) map pixels. Convolutions (and point-wise layers)
  are equivariant, so the error is ~0 at every s that is a multiple of r; at s = 1 a stage with r > 1 has
  a large error: stride and pooling break exact equivariance (they are equivariant to shifts by
  multiples of r only).
* **head invariance** (`head_invariance`): how much the logits move when the input is shifted. A
  global-average-pooling head over an equivariant trunk is exactly invariant to circular shifts by
  multiples of the trunk's total stride; a flatten head is not invariant at all (each position has its
  own weights).

The normalised error, everywhere: ||a - b|| / ||b||, Frobenius norms pooled over the whole batch (sqrt
of summed squares over summed squares), where a is computed from the shifted input and b is the
reference (the unshifted input's map, shifted; or the unshifted logits).

Shift modes: "circular" (torch.roll; nothing enters, nothing is lost) compares whole maps: it is the
exact test for networks with circular padding (nn.Conv2d(padding_mode="circular")), and on a
zero-padded network it includes the padding's border effects. "zeros" (shift with black fill, the
realistic case, and what `probe` uses for the stages) compares only the *interior*: the output pixels
whose receptive field, in both the shifted and the unshifted input, lies entirely on real image pixels
(no fill, no conv or pool padding); see `stage_geometry`. There, exact equivariance at multiples of the
stride holds for zero-padded networks too. A stage whose interior is empty (a deep stage of a small
image: its receptive field covers the whole image, so every position sees padding) has error None;
`probe` therefore also reports the circular, whole-map error, border effects included.

torch only; `probe_table` imports pandas when called.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1))  # (dx, dy) unit steps of a shift "by s"
EVAL_BATCH = 500  # as cnnbench.train.EVAL_BATCH: shift 0 then reproduces `evaluate` exactly
PROBE_IMAGES = 256  # images (the first ones) for equivariance and head invariance in `probe`
TABLE_COLUMNS = ["study", "variant", "fold", "seed", "spec_hash", "kind", "key", "shift", "value"]


# --- shifting -----------------------------------------------------------------------------------------

def black_fill(images) -> torch.Tensor:
    """The normalised value of a black (0 intensity) pixel, (1, C, 1, 1): -mean/std of a
    `cnnbench.images.Images` (anything with `.mean` and `.std` of that shape)."""
    return -images.mean / images.std


def shift_images(x: torch.Tensor, dx: int, dy: int, mode: str = "zeros",
                 fill: torch.Tensor | float | None = None) -> torch.Tensor:
    """A (B, C, H, W) batch shifted by integer pixels, dx to the right and dy down (negative: left, up).

    mode "zeros": the content that leaves the frame is lost and the pixels that enter get `fill`, a
    per-channel value of shape (1, C, 1, 1) (or a number); default 0. For normalised images pass
    `black_fill(images)`: 0 is the *mean* intensity there, not black. mode "circular": torch.roll, what
    leaves on one side enters on the other. The result keeps x's memory format (channels_last)."""
    if mode == "circular":
        out = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return out.contiguous(memory_format=_memory_format(x))
    if mode != "zeros":
        raise ValueError(f"shift mode {mode!r}: use 'zeros' or 'circular'")
    out = torch.empty_like(x)
    fill = 0.0 if fill is None else fill
    if isinstance(fill, torch.Tensor):
        out.copy_(fill.to(device=x.device, dtype=x.dtype).expand_as(x))
    else:
        out.fill_(fill)
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = _span(dy, h)
    src_x, dst_x = _span(dx, w)
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def _span(d: int, n: int) -> tuple[slice, slice]:
    """Source and destination slices of a shift by d along an axis of length n."""
    return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def default_max_shift(side: int) -> int:
    """k of the accuracy curve: shifts up to a quarter of the image side (28 -> 7, 32 -> 8, 8 -> 2)."""
    return math.ceil(0.25 * side)


# --- accuracy vs shift ----------------------------------------------------------------------------------

def shift_by_direction(x: torch.Tensor, s: int, mode: str = "zeros", fill=None, directions=DIRECTIONS,
                       start: int = 0) -> torch.Tensor:
    """The batch with image i (index `start` + i of the whole set) shifted by s pixels in direction
    directions[(start + i) % len(directions)], e.g. (s, s), (s, -s), (-s, s), (-s, -s) in turn."""
    if s == 0:
        return x
    out = torch.empty_like(x)
    for d, (dx, dy) in enumerate(directions):
        sel = slice((d - start) % len(directions), None, len(directions))
        out[sel] = shift_images(x[sel], s * dx, s * dy, mode, fill)
    return out


def shift_accuracy(model: nn.Module, x, y: torch.Tensor, shifts, num=None, fill=None,
                   directions=DIRECTIONS, batch: int = EVAL_BATCH) -> dict[int, float]:
    """{s: accuracy} for every s in `shifts`, image i shifted by s pixels in direction
    directions[i % len(directions)] (`shift_by_direction`) with fill; at s = 0 this is
    cnnbench.train.evaluate's accuracy, bit for bit (same batches). `x`: a normalised (N, C, H, W)
    tensor or a cnnbench.images.Images (anything with len() and slicing to batches); `fill` defaults to
    the black pixel of an Images object (`black_fill`), else 0. `num`: a cnnbench.numerics.Numerics,
    whose autocast() is the forward context (default fp32). One forward pass over the set per shift,
    in eval mode and inference mode, in batches of `batch`."""
    fill = _default_fill(x, fill)
    autocast = num.autocast if num is not None else nullcontext
    out = {}
    with _evaluating(model), torch.inference_mode():
        for s in shifts:
            correct = 0
            for i in range(0, len(y), batch):
                xb = shift_by_direction(x[i:i + batch], int(s), "zeros", fill, directions, start=i)
                with autocast():
                    logits = model(xb)
                correct += int((logits.argmax(1) == y[i:i + batch]).sum())
            out[int(s)] = correct / len(y)
    return out


def _default_fill(x, fill):
    if fill is None and hasattr(x, "mean") and hasattr(x, "std") and isinstance(x.mean, torch.Tensor):
        return black_fill(x)
    return fill


class _evaluating:
    """model.eval() inside the block, the previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# --- stage geometry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AxisGeometry:
    """One axis of a feature map: its size n, its cumulative stride r relative to the input, and the
    interval [lo, hi) of positions computed from valid input pixels only (no padding, no fill)."""

    n: int
    stride: int
    lo: int
    hi: int


def stage_geometry(features: nn.Module, size: tuple[int, int], valid: tuple[tuple[int, int], tuple[int, int]]
                   | None = None) -> dict[str, tuple[AxisGeometry, AxisGeometry]]:
    """Per stage (child of `features`): (H axis, W axis) geometry of its output for an input of
    `size` (H, W) whose valid pixels are `valid` = ((lo_h, hi_h), (lo_w, hi_w)) (default: all).

    Walks the modules: nn.Conv2d, nn.MaxPool2d and nn.AvgPool2d change the size, stride and valid
    interval (an output position is valid when its whole window, dilation included, lies on valid
    positions: padding is not valid); cnnbench's Residual intersects body and shortcut, Concat its
    branches; any other module with children is taken as a sequence of them, any other leaf as
    point-wise (activations, BatchNorm, dropout). Other spatial layers are not supported."""
    valid = valid or ((0, size[0]), (0, size[1]))
    axes = [AxisGeometry(n, 1, lo, hi) for n, (lo, hi) in zip(size, valid)]
    out = {}
    for name, stage in features.named_children():
        axes = [_walk(stage, g, a) for a, g in enumerate(axes)]
        out[name] = tuple(axes)
    return out


def _walk(m: nn.Module, g: AxisGeometry, axis: int) -> AxisGeometry:
    from cnnbench.models.build import Concat, Residual

    if isinstance(m, nn.Conv2d):
        k, s, d = m.kernel_size[axis], m.stride[axis], m.dilation[axis]
        if isinstance(m.padding, str):  # "valid" | "same" (stride 1): torch pads the extra pixel right
            total = 0 if m.padding == "valid" else d * (k - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = m.padding[axis]
        return _window(g, k, s, d, left, right, False)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (_pair(v)[axis] for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        d = _pair(getattr(m, "dilation", 1))[axis]
        return _window(g, k, s, d, p, p, m.ceil_mode)
    if isinstance(m, Residual):
        a = _walk(m.body, g, axis)
        b = _walk(m.shortcut, g, axis)
        return _intersect([a, b])
    if isinstance(m, Concat):
        return _intersect([_walk(b, g, axis) for b in m.children()])
    for child in m.children():
        g = _walk(child, g, axis)
    return g


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _window(g: AxisGeometry, k: int, s: int, d: int, left: int, right: int, ceil: bool) -> AxisGeometry:
    span = d * (k - 1)
    num = g.n + left + right - span - 1
    n = (-(-num // s) if ceil else num // s) + 1
    if ceil and (n - 1) * s >= g.n + left:  # PyTorch: the last window must start inside input or left pad
        n -= 1
    lo = max(0, -(-(g.lo + left) // s))  # i*s - left >= lo
    hi = min(n, (g.hi - 1 + left - span) // s + 1)  # i*s - left + span <= hi - 1
    return AxisGeometry(n, g.stride * s, lo, max(lo, hi))


def _intersect(parts: list[AxisGeometry]) -> AxisGeometry:
    if len({p.n for p in parts}) != 1:
        raise ValueError(f"branches of different sizes {[p.n for p in parts]}")
    lo, hi = max(p.lo for p in parts), min(p.hi for p in parts)
    return AxisGeometry(parts[0].n, max(p.stride for p in parts), lo, max(lo, hi))


# --- equivariance ---------------------------------------------------------------------------------------

def _stage_outputs(features: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, stage in features.named_children():
        x = stage(x)
        out[name] = x
    return out


def equivariance_errors(model: nn.Module, x: torch.Tensor, shifts=1, mode: str = "circular", fill=None,
                        num=None, directions=DIRECTIONS) -> dict[str, dict]:
    """Per stage of `model.features`: {"stride": r, "stride_w": r_w, "error": {s: normalised error}} for
    each input shift s in `shifts` (an int or a list). See the module docstring: image i is shifted by s
    in direction i mod 4 (`shift_by_direction`); its stage map is compared with the unshifted image's map
    shifted by s/r, or, when r does not divide s, by the better of floor(s/r) and ceil(s/r) (the same
    choice for every image); mode "circular": whole maps; mode "zeros": `fill`-filled input shift,
    interior only, None where the interior is empty. `x`: a normalised (B, C, H, W) tensor (a few hundred
    images: one forward pass of the features per shift, plus one). r: the cumulative stride along H
    (stride_w along W, used for the horizontal part of the shift)."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    if mode not in ("zeros", "circular"):
        raise ValueError(f"shift mode {mode!r}: use 'zeros' or 'circular'")
    autocast = num.autocast if num is not None else nullcontext
    size = tuple(x.shape[-2:])
    full = stage_geometry(model.features, size)
    nd = len(directions)
    with _evaluating(model), torch.inference_mode():
        with autocast():
            ref = {k: v.float() for k, v in _stage_outputs(model.features, x).items()}
        for name, (gh, gw) in full.items():
            if tuple(ref[name].shape[-2:]) != (gh.n, gw.n):
                raise ValueError(f"stage {name}: the geometry walk predicts {(gh.n, gw.n)}, the model gives "
                                 f"{tuple(ref[name].shape[-2:])}: a layer this probe does not know changes the size")
        out = {name: {"stride": gh.stride, "stride_w": gw.stride, "error": {}} for name, (gh, gw) in full.items()}
        for s in shifts:
            shifted = shift_by_direction(x, s, mode, fill if mode == "zeros" else None, directions)
            with autocast():
                outs = {k: v.float() for k, v in _stage_outputs(model.features, shifted).items()}
            moved = []  # per direction: the geometry of the shifted input's maps, and the input shift (H, W)
            for dx, dy in directions:
                u = (s * dy, s * dx)
                valid = tuple(_valid_after_shift(ui, n) for ui, n in zip(u, size))
                moved.append((u, stage_geometry(model.features, size, valid)))
            for name, geo in full.items():
                # candidate map shifts, as magnitudes per axis (signs follow each direction)
                mags = list(itertools.product(*[_candidates(s, g.stride) for g in geo]))
                errors = []
                for mag in mags:
                    num2 = den2 = 0.0
                    for d, (u, geo_moved) in enumerate(moved):
                        v = tuple(m if ui >= 0 else -m for m, ui in zip(mag, u))
                        a, b = _compare(outs[name][d::nd], ref[name][d::nd], v, mode, geo, geo_moved[name])
                        if a is None:
                            break
                        num2 += float(((a - b) ** 2).sum())
                        den2 += float((b ** 2).sum())
                    else:
                        errors.append(_ratio(num2, den2))
                errors = [e for e in errors if e is not None]
                out[name]["error"][s] = min(errors) if errors else None
    return out


def _candidates(s: int, r: int) -> list[int]:
    """Map shifts (magnitudes) nearest to an input shift of s pixels at stride r: s/r when r divides s,
    else both neighbours."""
    q, rem = divmod(s, r)
    return [q] if rem == 0 else [q, q + 1]


def _valid_after_shift(u: int, n: int) -> tuple[int, int]:
    """Valid input interval after a zero-fill shift by u along an axis of length n."""
    return (max(u, 0), n + min(u, 0))


def _compare(a: torch.Tensor, b: torch.Tensor, v: tuple[int, int], mode: str, geo, moved):
    """(f(T_u x), T_v f(x)) restricted to the comparable region; (None, None) if it is empty."""
    if mode == "circular":
        return a, torch.roll(b, shifts=v, dims=(2, 3))
    sl_a, sl_b = [], []
    for t, g0, g1 in zip(v, geo, moved):
        i0, i1 = max(g1.lo, g0.lo + t), min(g1.hi, g0.hi + t)
        if i1 <= i0:
            return None, None
        sl_a.append(slice(i0, i1))
        sl_b.append(slice(i0 - t, i1 - t))
    return a[..., sl_a[0], sl_a[1]], b[..., sl_b[0], sl_b[1]]


def _ratio(num: float, den: float) -> float | None:
    if den == 0:
        return 0.0 if num == 0 else None
    return math.sqrt(num / den)


def head_invariance(model: nn.Module, x: torch.Tensor, shifts=1, mode: str = "circular", fill=None, num=None,
                    directions=DIRECTIONS) -> dict[int, float | None]:
    """{s: ||logits(T_s x) - logits(x)|| / ||logits(x)||} for each input shift s in `shifts` (an int or a
    list), image i shifted in direction i mod 4, norms over the whole batch. With mode "circular", ~1e-7 for a
    global-average-pooling head over a trunk with circular padding whenever the trunk's total stride
    divides s (and the image side); O(1) for a flatten head. It measures the whole network; the head
    decides whether the trunk's equivariance becomes invariance."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    autocast = num.autocast if num is not None else nullcontext
    out = {}
    with _evaluating(model), torch.inference_mode():
        with autocast():
            ref = model(x).float()
        den2 = float((ref ** 2).sum())
        for s in shifts:
            with autocast():
                moved = model(shift_by_direction(x, s, mode, fill if mode == "zeros" else None, directions)).float()
            out[int(s)] = _ratio(float(((moved - ref) ** 2).sum()), den2)
    return out


# --- the probe of a run ---------------------------------------------------------------------------------

def probe(model: nn.Module, x_val, y_val: torch.Tensor, max_shift: int | None = None, num=None, *,
          fill=None, max_images: int = PROBE_IMAGES) -> dict:
    """The translation probe of a trained model, as a small JSON-serialisable dict for the run record:

        {"max_shift": k,
         "shifts": [0, 1, ..., k],
         "accuracy": [accuracy at each shift],
         "equivariance_shifts": [1, r1, r2, ...],  # 1 and each stage's cumulative stride below side/2
         "equivariance": {stage: {"stride": r,
                                  "error": [interior error at each equivariance shift, or None],
                                  "error_circular": [whole-map error at each equivariance shift]}},
         "head_invariance": [relative logit change at each equivariance shift],
         "n_images": N, "n_probe_images": M, "time_s": seconds}

    accuracy: `shift_accuracy` over all of x_val (black fill, diagonal directions). equivariance:
    `equivariance_errors` on the first `max_images` images, in mode "zeros" (black fill, interior
    only: exact, ~0, at multiples of the stride; None where a stage has no interior) and in mode
    "circular" (whole maps, so the border effects of zero padding are included). head_invariance:
    `head_invariance` in mode "circular" on the same images. Stage names are those of
    `model.features` (stem, stage0, stage1, ...). `x_val`: a cnnbench.images.Images (its black pixel is
    the fill) or a normalised tensor (then pass `fill`, else 0); `max_shift` defaults to
    `default_max_shift` of the smaller image side; `num`: the run's Numerics (autocast). Strict JSON:
    every number is finite or None.

    Cost: k+1 forward passes over x_val, and 3 x (equivariance shifts + 1) over the first M images
    (the features only, for two thirds of them): for 1,000 28x28 images (k = 7, shifts 1, 2, 4) about
    11 validation passes. Measured for the default `cnn` (widths 16, 32, max pooling, flatten head) on
    1,000 28x28 images, fp32 on one CPU thread (a shared 2-core machine): 0.64-0.67 s."""
    t0 = time.perf_counter()
    fill = _default_fill(x_val, fill)
    size = tuple(x_val[0:1].shape[-2:])
    k = default_max_shift(min(size)) if max_shift is None else int(max_shift)
    shifts = list(range(k + 1))
    acc = shift_accuracy(model, x_val, y_val, shifts, num, fill)
    xs = x_val[0:max_images]
    geo = stage_geometry(model.features, size)
    eq_shifts = sorted({1} | {g.stride for hw in geo.values() for g in hw if g.stride <= min(size) // 2})
    zeros = equivariance_errors(model, xs, eq_shifts, "zeros", fill, num)
    circular = equivariance_errors(model, xs, eq_shifts, "circular", None, num)
    head = head_invariance(model, xs, eq_shifts, "circular", None, num)
    return {
        "max_shift": k, "shifts": shifts, "accuracy": [acc[s] for s in shifts],
        "equivariance_shifts": eq_shifts,
        "equivariance": {name: {"stride": e["stride"], "error": [_finite(e["error"][s]) for s in eq_shifts],
                                "error_circular": [_finite(circular[name]["error"][s]) for s in eq_shifts]}
                         for name, e in zeros.items()},
        "head_invariance": [_finite(head[s]) for s in eq_shifts],
        "n_images": len(y_val), "n_probe_images": len(xs),
        "time_s": time.perf_counter() - t0,
    }


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def probe_table(records: list[dict]):
    """The tidy table of the probes of run records (those without "probe" add no rows), columns
    [study, variant, fold, seed, spec_hash, kind, key, shift, value]:

        kind "accuracy":     key "",    shift s (0..k),                     value accuracy (0..1)
        kind "equivariance": key stage, shift s (an equivariance shift),    value interior error, black fill
                                                                            (NaN: the stage has no interior)
        kind "equivariance_circular": the same, whole maps, circular shifts (border effects included)
        kind "stride":       key stage, shift 0,                            value the stage's cumulative stride
        kind "head":         key "",    shift s (an equivariance shift),    value relative logit change
    """
    import pandas as pd

    rows = []
    for r in records:
        p = r.get("probe")
        if not p:
            continue
        ids = (r["study"], r["variant"], r["fold"], r["seed"], r["spec_hash"])
        rows += [(*ids, "accuracy", "", s, a) for s, a in zip(p["shifts"], p["accuracy"])]
        for stage, e in p["equivariance"].items():
            rows.append((*ids, "stride", stage, 0, e["stride"]))
            rows += [(*ids, "equivariance", stage, s, v) for s, v in zip(p["equivariance_shifts"], e["error"])]
            rows += [(*ids, "equivariance_circular", stage, s, v)
                     for s, v in zip(p["equivariance_shifts"], e.get("error_circular", ()))]
        rows += [(*ids, "head", "", s, v) for s, v in zip(p["equivariance_shifts"], p["head_invariance"])]
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")  # None -> NaN
    return df.astype({"fold": "int64", "seed": "int64", "shift": "int64", "value": "float64",
                      "study": "object", "variant": "object", "spec_hash": "object", "kind": "object",
                      "key": "object"})
