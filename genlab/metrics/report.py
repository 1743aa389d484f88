"""`genlab compare`: one static HTML (and Markdown) table of several runs.

Each row: the model, its data, size, training length, the test NLL where the model has
``log_prob`` (exact or estimate, labelled), the sample-quality metrics where it has ``sample``
and its data has a feature network, the AUROC of its anomaly score against an OOD source where
it has one (the log-likelihood, else a GAN's discriminator), the linear-probe accuracy where it
has ``encode`` and its data has labels, its last sample grid and its loss curve. Cells a model
cannot fill read "–": the dispatch is on capabilities, never on model names.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from genlab.data import check_source
from genlab.data import load as load_data
from genlab.models import load
from genlab.models.base import read_config

DASH = "–"
# What compare can measure; "quality" is FID, KID and precision/recall together (one sample
# draw); "ood" needs an OOD source (--ood).
COMPARE_METRICS = ("nll", "quality", "ood", "probe")
MEASURED = ("test NLL", "FID", "KID", "precision", "recall", "OOD AUROC", "probe")
COLUMNS = ("run", "model", "data", "parameters", "steps", "time", *MEASURED, "samples", "curve")
PROBE_LIMIT = 5000  # training (and validation) images the report's probe fits on


@dataclass
class Row:
    run: str
    cells: dict[str, str] = field(default_factory=dict)  # column -> plain text
    sample_png: str | None = None  # relative to the report folder
    curve_png: str | None = None
    skipped: list[str] = field(default_factory=list)  # why cells read "–", for the progress line


def parse_metrics(text: str | None, ood: str | None = None) -> list[str]:
    """--metrics as a list: nll, quality (fid, kid, pr are accepted as aliases of quality),
    ood, probe. The default is all of them, ood only when an OOD source is given."""
    if text is None:
        return [m for m in COMPARE_METRICS if m != "ood" or ood is not None]
    out: list[str] = []
    for t in (t.strip().lower() for t in text.split(",")):
        if not t:
            continue
        name = "quality" if t in ("fid", "kid", "pr", "precision", "recall") else t
        if name not in COMPARE_METRICS:
            raise ValueError(f"unknown --metrics {t!r}; choose from nll, fid, kid, pr, ood, "
                             "probe (comma-separated)")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("--metrics is empty; choose from nll, fid, kid, pr, ood, probe")
    if "ood" in out and ood is None:
        raise ValueError("--metrics ood needs an OOD source: --ood SOURCE (e.g. fashion-mnist)")
    return out


def _read_log(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
            continue
    return rows


def _clock(seconds: float) -> str:
    if seconds < 10:  # tiny runs: whole seconds would read "0 s"
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _data_label(config: dict[str, Any]) -> str:
    d = config.get("train", {}).get("data", {})
    source = d.get("source") or "unknown"
    binarize = d.get("binarize")
    how = "grey values" if binarize is None else f"{binarize}-binarized"
    return f"{source} ({how})"


def _last_samples(run: Path) -> Path | None:
    grids = list((run / "samples").glob("step-*.png"))

    def step(p: Path) -> int:
        try:
            return int(p.stem.split("-", 1)[1])
        except ValueError:
            return -1
    return max(grids, key=step) if grids else None


def loss_curve(log: list[dict[str, Any]], out: Path, title: str) -> bool:
    """Plot every loss-like series of metrics.jsonl (loss, loss_d, val_loss, ...) over steps;
    False when the log has none."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written on servers too
    import matplotlib.pyplot as plt

    keys = sorted({k for r in log for k in r if k.startswith(("loss", "val_")) and
                   isinstance(r[k], (int, float))})
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(3.6, 2.4), dpi=100)
    for k in keys:
        pts = [(r["step"], r[k]) for r in log if k in r and "step" in r
               and math.isfinite(r[k])]
        if pts:
            xs, ys = zip(*pts, strict=True)
            # Validation points are sparse: markers make them visible beside the dense loss.
            ax.plot(xs, ys, label=k, marker="o" if k.startswith("val") else None, ms=3, lw=1)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def _run_data(config: dict[str, Any], split: str, limit: int | None,
              source: str | None = None) -> Any:
    """The run's data (or ``source``) as the run saw it: binarization, seed, shape."""
    d = config.get("train", {}).get("data", {})
    return load_data(source or d["source"], split, binarize=d.get("binarize"),
                     seed=d.get("seed", 0), limit=limit, shape=tuple(config["shape"]))


def _ood_cell(model: Any, config: dict[str, Any], test: Any, ood: str, limit: int | None,
              k: int | None, batch_size: int) -> str:
    """AUROC of the model's first anomaly score (its log-likelihood, else its discriminator's
    logit) for the run's test split against ``ood``'s, OOD as the positive class."""
    from genlab.metrics.detection import auroc, ood_scores

    split = "all" if Path(ood).exists() else "test"
    out_data = _run_data(config, split, limit, source=ood)
    kw = {} if k is None else {"k": k}  # ood_scores gives it to the estimates only
    torch.manual_seed(0)  # an estimated likelihood draws: the same cell on every call
    scores, _ = ood_scores(model, test, out_data, batch_size=batch_size, **kw)
    name, (s_in, s_out) = next(iter(scores.items()))
    return f"{_fmt(auroc(s_out, s_in), 3)}\n{name.split(' (')[0]}, vs {ood}"


def _probe_cell(model: Any, config: dict[str, Any], test: Any) -> str:
    """Linear-probe test accuracy of ``encode`` (and 10-NN beside it), fitted on the first
    PROBE_LIMIT training images, weight decay chosen on as many validation images."""
    from genlab.metrics.probe import probe

    train, val = (_run_data(config, s, PROBE_LIMIT) for s in ("train", "val"))
    (r,) = probe(model, train, val, test, controls=False).rows
    return (f"{100 * r.accuracy:.2f}%\nlinear, {r.dim}-d; 10-NN {100 * r.knn_accuracy:.2f}%; "
            f"{len(train):,} training images")


def compare_run(run: Path, out: Path, index: int, metrics: list[str], n: int,
                limit: int | None, k: int | None, device: str, batch_size: int = 500,
                progress: bool = False, ood: str | None = None) -> Row:
    """One row of the report; writes the run's images into ``out``."""
    from genlab.metrics import nll, sample_quality
    from genlab.metrics.detection import has_discriminator
    from genlab.metrics.features import feature_net_for
    from genlab.models.base import RunError

    config = read_config(run)
    model = load(run, device=device)
    log = _read_log(run)
    row = Row(str(run))
    c = row.cells
    c["run"] = run.name or str(run)
    c["model"] = str(config.get("model", DASH))
    c["data"] = _data_label(config)
    c["parameters"] = f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}"
    last = log[-1] if log else {}
    c["steps"] = f"{config.get('step', last.get('step', 0)):,}"
    c["time"] = _clock(last["time"]) if "time" in last else DASH
    source = config.get("train", {}).get("data", {}).get("source")
    for col in MEASURED:
        c[col] = DASH
    can_ood = model.has("log_prob") or has_discriminator(model)
    if source is not None and ("nll" in metrics and model.has("log_prob")
                               or "quality" in metrics and model.has("sample")
                               or "ood" in metrics and can_ood
                               or "probe" in metrics and model.has("encode")):
        test = _run_data(config, "test", limit)
        if "nll" in metrics and model.has("log_prob"):
            # An estimate uses the small -k given (the model's default, e.g. 5000, is slow).
            kw = {} if model.exact or k is None else {"k": k}
            r = nll(model, test, batch_size=batch_size, progress=progress, **kw)
            c["test NLL"] = f"{_fmt(r.nats)} nats\n{r.method}, {r.n_images:,} images"
        if "quality" in metrics and model.has("sample"):
            try:
                net = feature_net_for(source, device)
            except RunError:
                net = None  # no feature network for this data: the cells stay "–"
                row.skipped.append(f"no feature network for {source}")
            if net is not None:
                torch.manual_seed(0)
                q = sample_quality(model, test, net, n=n, metrics=("fid", "kid", "pr"),
                                   batch_size=batch_size, progress=progress)
                c["FID"] = f"{_fmt(q['fid'].value)}\n{n:,} samples"
                kid = q["kid"]
                c["KID"] = _fmt(kid.value, 4) + (f"\n± {_fmt(kid.std, 4)}" if kid.std else "")
                c["precision"] = _fmt(q["pr"].value, 3)
                c["recall"] = _fmt(q["pr"].details["recall"], 3)
        if "ood" in metrics and can_ood and ood is not None:
            if ood == source:
                row.skipped.append(f"--ood {ood} is the run's own data")
            else:
                c["OOD AUROC"] = _ood_cell(model, config, test, ood, limit, k, batch_size)
        if "probe" in metrics and model.has("encode"):
            if test.y is None:
                row.skipped.append(f"no labels in {source} for a probe")
            else:
                c["probe"] = _probe_cell(model, config, test)
    if "nll" in metrics and not model.has("log_prob"):
        row.skipped.append("no log_prob")
    if "quality" in metrics and not model.has("sample"):
        row.skipped.append("no sample")
    if "ood" in metrics and not can_ood:
        row.skipped.append("no anomaly score")
    if "probe" in metrics and not model.has("encode"):
        row.skipped.append("no encode")
    grid = _last_samples(run)
    if grid is not None:
        row.sample_png = f"run{index}-samples.png"
        shutil.copyfile(grid, out / row.sample_png)
    curve = f"run{index}-curve.png"
    if loss_curve(log, out / curve, c["run"]):
        row.curve_png = curve
    return row


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; font-size: 13px; }
small { color: #666; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; }
td.time { white-space: nowrap; }
td.run { font-weight: 600; white-space: nowrap; }
img { display: block; }
img.samples { width: 140px; image-rendering: pixelated; }  /* crisp pixels */
img.curve { width: 230px; }
p.note { color: #555; font-size: 13px; max-width: 60em; }
"""

NUMERIC = {"parameters", "steps", "time", "FID", "KID", "precision", "recall", "OOD AUROC",
           "probe"}


def write_html(rows: list[Row], path: Path, note: str) -> None:
    head = "".join(f"<th>{html.escape(col)}</th>" for col in COLUMNS)
    body = []
    for r in rows:
        tds = []
        for col in COLUMNS:
            if col == "samples":
                cell = (f'<img class="samples" src="{r.sample_png}" alt="samples of '
                        f'{html.escape(r.cells["run"])}">' if r.sample_png else DASH)
            elif col == "curve":
                cell = (f'<img class="curve" src="{r.curve_png}" alt="loss curve of '
                        f'{html.escape(r.cells["run"])}">' if r.curve_png else DASH)
            else:
                # A cell's first line is the number, the rest (how it was computed) small.
                first, *rest = r.cells[col].split("\n")
                cell = html.escape(first) + "".join(f"<br><small>{html.escape(t)}</small>"
                                                    for t in rest)
            names = (["num"] if col in NUMERIC else []) + ([col] if col in ("run", "time") else [])
            cls = f' class="{" ".join(names)}"' if names else ""
            tds.append(f"<td{cls}>{cell}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    path.write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>genlab compare</title><style>{CSS}</style></head><body>\n"
        "<h1>genlab compare</h1>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
        + f"\n</tbody></table>\n<p class=\"note\">{html.escape(note)}</p>\n</body></html>\n")


def write_markdown(rows: list[Row], path: Path, note: str) -> None:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["# genlab compare", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for col in COLUMNS:
            if col == "samples":
                cells.append(f"![samples]({r.sample_png})" if r.sample_png else DASH)
            elif col == "curve":
                cells.append(f"![curve]({r.curve_png})" if r.curve_png else DASH)
            else:
                cells.append(esc(r.cells[col].replace("\n", ", ")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", note, ""]
    path.write_text("\n".join(lines))


def compare(runs: list[str], out: str | Path, metrics: list[str] | None = None,
            n: int = 2000, limit: int | None = None, k: int | None = None,
            device: str = "cpu", stream: TextIO | None = None, progress: bool = False,
            ood: str | None = None) -> Path:
    """Write ``out``/index.html and ``out``/report.md comparing ``runs``; returns index.html.
    ``ood``: the OOD source of the AUROC column (a data source or folder), else no column
    value. ``progress`` adds the metrics' own progress (a bar, or a line every 10 s in logs)."""
    stream = stream if stream is not None else sys.stderr
    metrics = metrics if metrics is not None else parse_metrics(None, ood)
    for run in runs:  # every run is checked before the first slow metric
        read_config(run)  # the checks every command applies: present, a regular file, JSON
    if ood is not None and "ood" in metrics:
        check_source(ood)  # and the OOD source, which is loaded after each run's other metrics
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, run in enumerate(runs, 1):
        stream.write(f"[{i}/{len(runs)}] {run}\n")
        stream.flush()
        row = compare_run(Path(run), dest, i, metrics, n, limit, k, device, progress=progress,
                          ood=ood)
        line = "; ".join(f"{col} {row.cells[col].replace(chr(10), ' (', 1)})"
                         for col in ("test NLL", "FID", "OOD AUROC", "probe")
                         if row.cells[col] != DASH)
        why = ", ".join(row.skipped)
        line = "; ".join(t for t in (line, why and f"skipped: {why}") if t)
        stream.write(f"[{i}/{len(runs)}] {run}: {line or 'no metrics asked for'}\n")
        rows.append(row)
    note = ("test NLL on each run's own test split and binarization; FID, KID (± std over "
            "subsets), precision and recall (k=3) in the feature space of genlab's classifier "
            f"for the run's data, against its test split. OOD AUROC: the model's anomaly score "
            f"(its log-likelihood, else its discriminator's logit) on the run's test split "
            f"against the OOD source's, OOD positive. probe: multinomial logistic regression "
            f"on encode features of the first {PROBE_LIMIT:,} training images (weight decay "
            f"chosen on validation), test accuracy. {DASH}: the model cannot compute it, its "
            "data has no feature network or labels, or it was not asked for (--metrics).")
    index = dest / "index.html"
    write_html(rows, index, note)
    write_markdown(rows, dest / "report.md", note)
    return index
