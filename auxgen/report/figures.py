"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

pyplot is never imported: no global figure state and no backend switch in a host process
that imports auxgen (a notebook keeps its own backend).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from auxgen.report.labels import COLLAPSING, NEARLY_UNIFORM, Analysis, Block, HumanAgreement, Labels
from auxgen.report.runs import RunInfo

DPI = 110
BLOCK_COLOURS = ("#4C72B0", "#DD8452")  # alternate per primary class so neighbouring blocks stay apart


@dataclass
class Fig:
    """One figure of the report: file name, heading, a sentence saying how to read it, PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


def _plain_text(draw: Callable[..., Any]) -> Callable[..., Any]:
    """Labels are text, never math: a class named `price $\\frac$` would crash matplotlib's mathtext parser.

    Text objects take parse_math from the rc settings when they are created, so the figure is built inside.
    """
    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # no Software/date metadata: the same inputs give the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _run_colours(n: int) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _series(history: list[dict[str, Any]], key: str, method: str = "") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    if key == "train_loss_aux" and method == "single":  # recorded as 0: there is no auxiliary head to train
        return xs, ys
    for i, row in enumerate(history):
        if key == "_usage_frac":  # usage over all K classes as a fraction of its maximum, like the block usage
            h, m = row.get("aux_usage_entropy"), row.get("aux_usage_entropy_max")
            v = h / m if isinstance(h, (int, float)) and isinstance(m, (int, float)) and m > 0 else None
        else:
            v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(v))
    return xs, ys


# (file stem, title, y label, [(metrics key, what it is, line style)], reference line, its meaning, caption)
CURVE_PANELS: tuple[tuple[str, str, str, list[tuple[str, str, str]], float | None, str, str], ...] = (
    ("curves_accuracy", "Primary task accuracy", "accuracy",
     [("test_acc", "test", "-"), ("train_acc", "train", "--")], None, "",
     "Accuracy of the primary task by epoch: test set (solid) and training batches (dashed)."),
    ("curves_loss", "Primary task loss", "loss",
     [("test_loss", "test", "-"), ("train_loss_pri", "train", "--")], None, "",
     "Loss of the primary head by epoch: test set (solid) and mean over training batches (dashed)."),
    ("curves_aux_loss", "Auxiliary task loss (training)", "loss",
     [("train_loss_aux", "auxiliary", "-")], None, "",
     "Mean training loss of the auxiliary head against its targets (generated, random or human labels). "
     "It cannot fall far below the entropy of soft targets."),
    ("curves_meta", "Meta loss (primary loss on the meta batch)", "loss",
     [("meta_loss_before", "before look-ahead", "--"), ("meta_loss_after", "after look-ahead", "-")], None, "",
     "MAXL only. The generator is trained to lower the primary loss after a look-ahead step on its labels: "
     "solid below dashed means its labels help the primary task."),
    ("curves_usage", "Auxiliary class usage", "entropy / maximum",
     [("aux_block_usage_frac", "inside each block", "-"), ("_usage_frac", "over all K classes", "--")],
     COLLAPSING, "collapse below",
     "Entropy of the mean auxiliary label as a fraction of its maximum: 1 = every auxiliary class used "
     "equally, 0 = one class takes everything. Below 0.5 inside the blocks, classes are collapsing."),
    ("curves_sample_entropy", "Per-sample label entropy", "entropy / log ψ",
     [("aux_sample_entropy_frac", "per-sample", "-")], NEARLY_UNIFORM, "nearly uniform above",
     "Mean entropy of one sample's label inside its block, as a fraction of log ψ: 0 = a confident one-hot "
     "label, 1 = uniform over the block (the auxiliary task then carries no information)."),
    ("curves_grad_cosine", "Gradient cosine, primary vs auxiliary", "cosine",
     [("grad_cosine", "cosine", "-")], 0.0, "",
     "Cosine between the primary and auxiliary losses' gradients on the shared layers (recorded with "
     "--cosine-every): above 0 the auxiliary task pulls the same way as the primary task."),
)


@_plain_text
def curve_figures(runs: Sequence[RunInfo]) -> list[Fig]:
    """Training curves, one figure per panel; panels whose keys no run recorded are left out."""
    colours = _run_colours(len(runs))
    figs = []
    for stem, title, ylabel, keys, ref, ref_text, caption in CURVE_PANELS:
        drawn = [(r, k) for r in runs for k in keys if _series(r.history, k[0], r.method)[1]]
        if not drawn:
            continue
        fig = Figure(figsize=(6.4, 3.9))
        ax = fig.add_subplot()
        longest = max(len(r.history) for r in runs)
        marker = "o" if longest <= 30 else None  # a few epochs: points, so a 2-epoch line reads as two values
        for ri, r in enumerate(runs):
            for key, _, style in keys:
                xs, ys = _series(r.history, key, r.method)
                if ys:
                    ax.plot(xs, ys, linestyle=style, color=colours[ri], marker=marker, markersize=3.5, linewidth=1.6)
        if ref is not None:
            ax.axhline(ref, color="#999999", linewidth=0.9, linestyle=":")
            if ref_text:
                ax.annotate(f"{ref_text} {ref:g}", (0.99, ref), xycoords=("axes fraction", "data"), ha="right",
                            va="top", fontsize=8, color="#666666")  # below the line: the curves sit above it
        if stem in ("curves_usage", "curves_sample_entropy"):  # fractions: the whole range is the scale
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        runs_drawn = [ri for ri, r in enumerate(runs) if any(rr is r for rr, _ in drawn)]
        handles = [Line2D([], [], color=colours[ri], linewidth=2, label=runs[ri].label) for ri in runs_drawn]
        styles_used = [(k[1], k[2]) for k in keys if any(kk is k for _, kk in drawn)]
        if len(styles_used) > 1:  # colour names the run, line style names the quantity
            handles += [Line2D([], [], color="#333333", linestyle=s, label=what) for what, s in styles_used]
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
        fig.tight_layout()
        figs.append(Fig(stem, title, caption, _png(fig)))
    return figs


def _block_positions(blocks: Sequence[Block]) -> tuple[np.ndarray, list[float]]:
    """x of every auxiliary class (a gap between blocks) and the centre of each block."""
    xs, centres, x = [], [], 0.0
    for b in blocks:
        xs.extend(x + np.arange(b.psi))
        centres.append(x + (b.psi - 1) / 2)
        x += b.psi + 1
    return np.asarray(xs), centres


@_plain_text
def usage_figure(an: Analysis) -> Fig:
    """Per primary class: mean soft mass of each of its auxiliary classes, and how many samples each one wins."""
    blocks = an.blocks
    k = sum(b.psi for b in blocks)
    width = float(np.clip(2.0 + 0.16 * (k + len(blocks)), 7.0, 22.0))
    fig = Figure(figsize=(width, 5.6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs, centres = _block_positions(blocks)
    colours = [BLOCK_COLOURS[i % 2] for i, b in enumerate(blocks) for _ in range(b.psi)]
    top.bar(xs, np.concatenate([b.mass for b in blocks]), color=colours, width=0.8)
    bottom.bar(xs, np.concatenate([b.hard for b in blocks]), color=colours, width=0.8)
    start = 0.0
    for b in blocks:  # what equal use of the block's classes would give
        top.hlines(1.0 / b.psi, start - 0.45, start + b.psi - 0.55, colors="#333333", linestyles=":", linewidth=1)
        if b.n:
            bottom.hlines(b.n / b.psi, start - 0.45, start + b.psi - 0.55, colors="#333333", linestyles=":",
                          linewidth=1)
        start += b.psi + 1
    top.set_ylabel("mean soft label mass")
    top.set_title("How each primary class uses its auxiliary classes (dotted: equal use)")
    bottom.set_ylabel("samples (hard label)")
    bottom.set_xticks(centres)
    many = len(blocks) > 12 or max((len(b.name) for b in blocks), default=0) > 10
    numbered = k <= 60  # auxiliary class numbers (as aux_hard in an export) under the bars, while they fit
    if numbered:
        bottom.set_xticks(xs, [str(b.offset + j) for b in blocks for j in range(b.psi)], minor=True)
        bottom.tick_params(axis="x", which="minor", labelsize=7)  # tick_params persists; set_xticks' font does not
        bottom.tick_params(axis="x", which="major", pad=14, length=0)
        bottom.xaxis.remove_overlapping_locs = False  # a block's middle class sits under the block's name tick
    bottom.set_xticklabels([b.name for b in blocks], rotation=60 if many else 0, ha="right" if many else "center",
                           fontsize=8 if many else 9)
    bottom.set_xlabel("primary class" + (" (numbers: auxiliary classes of its block)" if numbered else
                                         " (one bar per auxiliary class of its block)"))
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return Fig("labels_usage", "Auxiliary class usage per primary class",
               "Top: the mean soft label of each primary class's samples over its ψ auxiliary classes (sums to 1 "
               "per class). Bottom: how many samples have each auxiliary class as their hard (argmax) label. "
               "Bars far above the dotted line take over their block; empty bars are classes nobody uses.",
               _png(fig))


@_plain_text
def entropy_figure(an: Analysis) -> Fig:
    """Histogram of per-sample entropy inside the block, as a fraction of log psi."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    ax.hist(an.entropy_frac, bins=np.linspace(0, 1, 41), color=BLOCK_COLOURS[0])
    ax.axvline(NEARLY_UNIFORM, color="#C44E52", linestyle="--", linewidth=1.2,
               label=f"nearly uniform above {NEARLY_UNIFORM:g}")
    if len(an.entropy_frac):
        mean = float(np.mean(an.entropy_frac))
        ax.axvline(mean, color="#333333", linewidth=1.2, label=f"mean {mean:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("entropy of the sample's label / log ψ   (0 = one class, 1 = uniform over its block)")
    ax.set_ylabel("samples")
    ax.set_title("Per-sample label entropy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return Fig("labels_entropy", "Per-sample label entropy",
               "How sure the generator is about each sample: mass near 0 means confident labels; a pile near 1 "
               "means labels that are almost uniform over the block.", _png(fig))


@_plain_text
def human_figure(human: HumanAgreement, fine_names: list[str] | None, max_panels: int = 20) -> Fig:
    """Contingency of generated (hard) and human fine classes within each primary class, as heat maps."""
    per = human.per_class[:max_panels]
    ncols = min(4, len(per))
    nrows = -(-len(per) // ncols)
    widest = max(len(c["fine"]) for c in per)
    cell = 0.42
    pw = max(2.6, 1.4 + cell * widest)
    ph = max(2.4, 1.5 + cell * max(c["table"].shape[0] for c in per))
    # constrained layout keeps rotated class names, the shared axis labels and the colour bar apart
    fig = Figure(figsize=(pw * ncols + 1.2, ph * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, c in zip(axes, per, strict=False):
        t = c["table"]
        share = t / np.maximum(t.sum(1, keepdims=True), 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        if t.size <= 150:
            for (r, q), v in np.ndenumerate(t):
                ax.text(q, r, str(v), ha="center", va="center", fontsize=7,
                        color="white" if share[r, q] > 0.6 else "#222222")
        names = [fine_names[f] if fine_names and f < len(fine_names) else str(f) for f in c["fine"]]
        names = [n.removeprefix(f"{c['name']}/") for n in names]  # a two-level tree names fine classes COARSE/FINE
        ax.set_xticks(range(len(names)))
        rotate = max(len(n) for n in names) > 3
        ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=7)
        ax.set_yticks(range(t.shape[0]))
        ax.set_yticklabels([f"aux {c['offset'] + r}" for r in range(t.shape[0])], fontsize=7)
        ax.set_title(f"{c['name']}: NMI {c['nmi']:.2f} (chance {c['chance']:.2f})", fontsize=9)
    for ax in axes[len(per):]:
        ax.set_visible(False)
    fig.supxlabel("human fine class", fontsize=9)
    fig.supylabel("generated auxiliary class (hard label)", fontsize=9)
    fig.colorbar(im, ax=axes[:len(per)].tolist(), shrink=0.6, label="share of the generated class's samples")
    more = f" (the first {max_panels} of {len(human.per_class)} primary classes)" if len(human.per_class) > max_panels \
        else ""
    return Fig("labels_human", "Generated versus human classes",
               f"Within each primary class{more}: how the samples of each generated auxiliary class (rows) spread "
               f"over the dataset's human fine classes (columns); numbers are sample counts, colour the row's share. "
               f"A row concentrated in one column means that generated class matches a human class.", _png(fig))


def _tile(img: np.ndarray, scale: int) -> np.ndarray:
    """CHW uint8 -> HWC float in [0, 1], upscaled by pixel repetition (small images stay sharp)."""
    x = img.transpose(1, 2, 0).astype(np.float32) / 255.0
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    elif x.shape[2] != 3:
        x = np.repeat(x[:, :, :1], 3, axis=2)
    return x.repeat(scale, 0).repeat(scale, 1)


@_plain_text
def grid_figure(labels: Labels, block: Block, examples: list[tuple[list[int], list[int]]], top: int, low: int) -> Fig:
    """One row per auxiliary class of a primary class: its most confident images, then its least confident members."""
    assert labels.images is not None
    h, w = labels.images.shape[2:]
    scale = max(1, 48 // max(h, w))
    th, tw = h * scale, w * scale
    gap, text = max(2, tw // 10), max(10, th // 3)   # pixels between tiles, and below each tile for its mass
    sep = tw // 2 if low else 0                        # between the two groups of columns
    cols = top + low
    width = cols * (tw + gap) + sep
    row_h = th + text + gap
    canvas = np.ones((block.psi * row_h, width, 3), dtype=np.float32)
    fig = Figure(figsize=(max(6.0, width / 60 + 2.6), max(1.6, block.psi * row_h / 60 + 0.9)))
    ax = fig.add_subplot()
    spots = []
    for k, (best, worst) in enumerate(examples):
        for j, s in enumerate(best + [None] * (top - len(best)) + worst):
            if s is None:
                continue
            x0 = j * (tw + gap) + (sep if j >= top else 0)
            y0 = k * row_h
            canvas[y0:y0 + th, x0:x0 + tw] = _tile(labels.images[s], scale)
            spots.append((x0 + tw / 2, y0 + th + 1, float(labels.soft[s, block.offset + k])))
    ax.imshow(canvas, interpolation="nearest")
    for x, y, p in spots:
        ax.text(x, y, f"{p:.2f}", ha="center", va="top", fontsize=6.5, color="#333333")
    ax.set_xticks([(top * (tw + gap)) / 2] + ([top * (tw + gap) + sep + low * (tw + gap) / 2] if low else []))
    ax.set_xticklabels(["most confident (highest soft mass)"] + (["least confident members"] if low else []),
                       fontsize=8)
    ax.xaxis.set_ticks_position("top")
    if low:
        for k, (_, worst) in enumerate(examples):
            if not worst:
                ax.text(top * (tw + gap) + sep + 2, k * row_h + th / 2,
                        "no members" if block.hard[k] == 0 else "all shown on the left", fontsize=7.5,
                        color="#888888", va="center")
    ax.set_yticks([k * row_h + th / 2 for k in range(block.psi)])
    # the global index, as aux_hard in an export names it
    ax.set_yticklabels([f"aux {block.offset + k}\n{int(block.hard[k])} of {block.n} samples\nmean mass "
                        f"{block.mass[k]:.2f}" for k in range(block.psi)], fontsize=7.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"Primary class {block.name}: {block.n} samples", fontsize=10, loc="left")
    fig.tight_layout()
    return Fig(f"grid_{block.primary:04d}", f"Primary class {block.name}", "", _png(fig))
