"""One self-contained HTML page about some runs: every picture inlined, nothing fetched.

    from mnist_ray.report import build
    html = build(Store("mnist-ray-store"))            # the latest 20 runs
    html = build(store, ["run-2026", "run-2027"], eval_id=None)

The page holds: the runs compared (a table), their loss curves, accuracy against each
parameter that differs, the best accuracy of each model when the runs differ in model,
and for one evaluation (the latest of the chosen runs unless named) its confusion
matrix, per-class accuracy, the random sample with its probabilities, and the first
misclassified test images. A run that is not finished (running, interrupted, failed) is
listed with its status and nothing else: no cost in the table, no curve, no accuracy. Pictures are matplotlib PNGs in
data: URIs; there is no script, font, stylesheet or image from anywhere else, so the file
opens the same offline, from a mail attachment, or from an object store.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from mnist_ray import output
from mnist_ray.compare import PARAMS, RUN_READ, differing, set_options
from mnist_ray.query import find_run, matching, open_store
from mnist_ray.store import Store, StoreError

LATEST = 20  # runs in a report when none are named: enough to compare, few enough to read
EVAL_LIGHT = ["eval_id", "run_id", "created_at", "accuracy", "shards", "dataset"]


def build(
    store: Store, run_ids: list[str] | None = None, eval_id: str | None = None
) -> tuple[str, list]:
    """The page's HTML and the store's bad files."""
    con, bad = open_store(store, columns={"runs": RUN_READ, "evaluations": EVAL_LIGHT})
    # Only the chosen rows become Python objects: a store can hold 100,000 runs.
    order = "ORDER BY created_at, run_id"
    ids = [r for (r,) in con.sql(f"SELECT run_id FROM runs {order}").fetchall()]
    if not ids:
        raise StoreError("no runs yet; train one first", about="store", value=store.location)
    if run_ids:
        known = [{"run_id": r} for r in ids]
        ids = [find_run(store, r, runs=known, about="RUN")["run_id"] for r in run_ids]
    else:
        ids = ids[-LATEST:]
    con.register("chosen", pa.table({"run_id": pa.array(ids, pa.string())}))
    by_id = {r["run_id"]: r for r in _rows(con, "runs", "run_id IN (SELECT run_id FROM chosen)")}
    chosen = [by_id[r] for r in ids]
    evals = _rows(con, "evaluations", "run_id IN (SELECT run_id FROM chosen)")
    latest = {e["run_id"]: e for e in evals}  # oldest first, so the last one wins
    for r in chosen:
        r["accuracy"] = latest[r["run_id"]]["accuracy"] if r["run_id"] in latest else None
    picked = _pick_eval(evals, eval_id)
    full = None
    if picked is not None:
        quoted = picked["eval_id"].replace("'", "''")
        one, _ = open_store(store, ["evaluations"], where={"evaluations": f"eval_id = '{quoted}'"})
        full = _rows(one, "evaluations")[0]
    return _page(store, chosen, full), bad


def _rows(con, table: str, where: str = "true") -> list[dict]:
    sql = f"SELECT * FROM {table} WHERE {where} ORDER BY created_at"
    return con.sql(sql).to_arrow_table().to_pylist()


def _pick_eval(evals: list[dict], eval_id: str | None) -> dict | None:
    if eval_id is None:
        return evals[-1] if evals else None
    hits = matching(evals, "eval_id", eval_id)
    if len(hits) != 1:
        what = "no evaluation" if not hits else f"{len(hits)} evaluations match"
        raise StoreError(
            f"{what} of the chosen runs; see `mnist-ray results`", about="eval_id", value=eval_id
        )
    return hits[0]


# ---- the page -----------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; text-align: left; }
tr:nth-child(even) { background: #f5f5f5; } th { background: #e8e8e8; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .note { color: #666; }
"""


def finished(run: dict) -> bool:
    """Null is finished: every run was stored finished before runs had a status."""
    return run.get("status") in (None, "finished")


def status(run: dict) -> str:
    """`interrupted at epoch 3: cause` (the epoch of its newest checkpoint, if known)."""
    text = run.get("status") or "finished"
    if not finished(run) and run.get("checkpoint_epoch"):
        text += f" at epoch {run['checkpoint_epoch']}"
    return text + (f": {run['failure']}" if run.get("failure") else "")


def _page(store: Store, runs: list[dict], evaluation: dict | None) -> str:
    differ, same = differing(runs, PARAMS + set_options(runs)) if len(runs) > 1 else ([], {})
    columns = ["run_id", "created_at", *differ, "last_cost", "best_cost", "accuracy", "device"]
    done = [r for r in runs if finished(r)]
    unfinished = [r for r in runs if not finished(r)]
    table_rows = [
        r | {"last_cost": (r["epoch_costs"] or [None])[-1], "best_cost": _best(r)}
        if finished(r)
        else r | {"accuracy": None}  # the costs of the epochs done so far are no outcome
        for r in runs
    ]
    table_rows = [r | {"status": status(r)} for r in table_rows]
    if unfinished:
        columns.append("status")
    parts = [
        f"<h1>mnist-ray report: {len(runs)} run(s)</h1>",
        f"<p class='note'>store {html.escape(store.location)}, made "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
        "<h2>Runs</h2>",
        _table(columns, table_rows),
    ]
    if same:
        text = ", ".join(f"{k}={v}" for k, v in same.items())
        parts.append(f"<p class='note'>same in every run: {html.escape(text)}</p>")
    parts.append("<h2>Loss curves</h2>")
    if unfinished:
        text = "; ".join(f"{r['run_id']} ({status(r)})" for r in unfinished)
        parts.append(f"<p class='note'>Not finished, so not drawn: {html.escape(text)}</p>")
    if any(r["epoch_costs"] for r in done):
        parts.append(_img(loss_curves(done), "training cost per epoch"))
    else:
        parts.append("<p class='note'>No finished run to draw.</p>")
    parts.append("<h2>Accuracy against each parameter that differs</h2>")
    scored = [r for r in done if r["accuracy"] is not None]
    if differ and scored:
        parts.append(_img(accuracy_by_param(scored, differ), "accuracy against parameters"))
    else:
        parts.append("<p class='note'>No parameter differs among evaluated runs.</p>")
    if len({r["model"] for r in runs}) > 1:
        parts.append("<h2>Accuracy by model</h2>")
        if scored:
            parts.append(_img(accuracy_by_model(runs), "accuracy by model"))
            counts = {m: sum(r["model"] == m for r in runs) for m in best_by_model(runs)}
            rows = [
                {"model": m, "best_accuracy": a, "runs": counts[m]}
                for m, a in best_by_model(runs).items()
            ]
            parts.append(_table(["model", "best_accuracy", "runs"], rows))
        else:
            parts.append("<p class='note'>No run evaluated yet: no accuracy to compare.</p>")
    if evaluation is None:
        parts.append("<p class='note'>No evaluation yet: run <code>mnist-ray evaluate</code>.</p>")
    else:
        parts += _evaluation(evaluation)
    body = "\n".join(parts)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>mnist-ray report</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _best(run: dict) -> float | None:
    return min(run["epoch_costs"]) if run["epoch_costs"] else None


def _evaluation(e: dict) -> list[str]:
    head = (
        f"<h2>Evaluation {html.escape(e['eval_id'])} of run {html.escape(e['run_id'])}</h2>"
        f"<p>accuracy <b>{e['accuracy']:.4f}</b> ({e['correct']}/{e['total']}) on "
        f"{html.escape(e['dataset'])}, {e['shards']} shard(s)</p>"
    )
    parts = [head, _img(confusion_heatmap(e), "confusion matrix")]
    parts.append(_img(per_class(e), "per-class accuracy"))
    if e["sample_pixels"]:
        parts += ["<h3>The random sample</h3>", _img(sample(e), "random sample")]
    if e.get("misclassified_index"):
        parts += ["<h3>Misclassified test images</h3>", _img(misclassified(e), "misclassified")]
    else:
        parts.append("<p class='note'>This evaluation predates the misclassified images.</p>")
    return parts


def _table(columns: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(output.cell(c, r.get(c)))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


# ---- the pictures -------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)  # the figures lay themselves out: one draw
    _plt().close(fig)
    return buffer.getvalue()


def loss_curves(runs: list[dict]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(layout="constrained", figsize=(9, 4.5))
    for r in runs:
        costs = r["epoch_costs"] or []
        ax.plot(range(1, len(costs) + 1), costs, marker=".", label=r["run_id"])
    ax.set_title("Training cost per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy cost (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="run")
    return _png(fig)


def accuracy_by_param(runs: list[dict], params: list[str]) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(params), layout="constrained", figsize=(4 * len(params), 3.5), squeeze=False
    )
    for ax, p in zip(axes[0], params, strict=True):
        values = [r[p] for r in runs]
        acc = [r["accuracy"] for r in runs]
        numeric = all(isinstance(v, int | float) for v in values)
        if numeric:
            ax.scatter(values, acc, label="latest evaluation")
            positive = all(v > 0 for v in values)
            if positive and max(values) / min(values) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], acc, label="latest evaluation")
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(f"accuracy vs {p}")
        ax.set_xlabel(UNITS.get(p, p))
        ax.set_ylabel("test accuracy (fraction)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def accuracy_by_model(runs: list[dict]) -> bytes:
    """A bar per model: the best of its runs' latest evaluations (a model none of whose
    runs is evaluated, or finished, gets no bar, and says so)."""
    plt = _plt()
    best = best_by_model(runs)
    models = list(best)
    fig, ax = plt.subplots(layout="constrained", figsize=(max(6.5, 1.2 * len(models) + 3), 3.8))
    heights = [best[m] or 0.0 for m in models]
    bars = ax.bar(
        range(len(models)), heights, color="tab:blue", label="its best run\n(latest evaluation)"
    )
    for bar, m in zip(bars, models, strict=True):
        text = f"{best[m]:.4f}" if best[m] is not None else "not evaluated"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, text,
                ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(models)), models, rotation=30 if len(models) > 4 else 0)
    ax.set_ylim(0, 1.1)
    ax.set_title("Best test accuracy per model")
    ax.set_xlabel(UNITS["model"])
    ax.set_ylabel("test accuracy (fraction)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # clear of the bars
    return _png(fig)


def best_by_model(runs: list[dict]) -> dict[str, float | None]:
    """Each model (in the order its runs came) -> the best latest-evaluation accuracy of
    its finished runs; None where none of them is evaluated."""
    best: dict[str, float | None] = dict.fromkeys(r["model"] for r in runs)
    for r in runs:
        if finished(r) and r["accuracy"] is not None:
            best[r["model"]] = max(r["accuracy"], best[r["model"]] or 0.0)
    return best


UNITS = {
    "lr": "learning rate (per optimizer step)",
    "epochs": "epochs (passes over the training set)",
    "batch_size": "batch size (images per step)",
    "seed": "seed",
    "dataset": "dataset",
    "model": "model (see `mnist-ray models`)",
    "optimizer": "optimizer",
}


def confusion_heatmap(e: dict) -> bytes:
    plt = _plt()
    matrix = np.asarray(e["confusion"]).reshape(10, 10)
    fig, ax = plt.subplots(layout="constrained", figsize=(6.5, 5.5))
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, label="test images")
    for (i, j), n in np.ndenumerate(matrix):
        color = "white" if n > matrix.max() / 2 else "black"
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title(f"Confusion matrix ({e['eval_id']})")
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    return _png(fig)


def per_class(e: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(layout="constrained", figsize=(6.5, 3.5))
    ax.bar(range(10), e["per_class_accuracy"], color="tab:blue", label="per class")
    ax.axhline(e["accuracy"], color="tab:red", linestyle="--", label=f"all: {e['accuracy']:.4f}")
    ax.set_xticks(range(10))
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy per digit")
    ax.set_xlabel("true digit")
    ax.set_ylabel("accuracy (fraction)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def sample(e: dict) -> bytes:
    plt = _plt()
    fig, (left, right) = plt.subplots(
        1, 2, layout="constrained", figsize=(7.5, 3), width_ratios=[1, 1.6]
    )
    left.imshow(np.asarray(e["sample_pixels"], np.uint8).reshape(28, 28), cmap="Greys")
    left.set_title(f"test image {e['sample_index']}: label {e['sample_label']}")
    left.axis("off")
    p = e["sample_probabilities"]
    colors = ["tab:red" if d == e["sample_prediction"] else "tab:gray" for d in range(10)]
    right.bar(range(10), p, color=colors, label="predicted (red)")
    right.set_xticks(range(10))
    right.set_title(f"predicted {e['sample_prediction']} (p={p[e['sample_prediction']]:.3f})")
    right.set_xlabel("digit")
    right.set_ylabel("probability")
    right.legend(fontsize=8)
    return _png(fig)


def misclassified(e: dict) -> bytes:
    """One mosaic of the images in one axes: 25 axes take a second to draw, this a tenth."""
    plt = _plt()
    images = [np.frombuffer(p, np.uint8).reshape(28, 28) for p in e["misclassified_pixels"]]
    cols, tile = 5, 28 + 14  # 14 blank rows above each digit for its caption
    rows = -(-len(images) // cols)
    mosaic = np.zeros((rows * tile, cols * (28 + 4)), np.uint8)
    fig, ax = plt.subplots(layout="constrained", figsize=(cols * 1.6, rows * 1.75))
    for k, image in enumerate(images):
        top, left = (k // cols) * tile + 14, (k % cols) * (28 + 4) + 2
        mosaic[top : top + 28, left : left + 28] = image
        ax.text(
            left + 14,
            top - 2,
            f"#{e['misclassified_index'][k]}: {e['misclassified_label'][k]} -> "
            f"{e['misclassified_prediction'][k]}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.imshow(mosaic, cmap="Greys", interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"First {len(images)} misclassified test images (#index: label -> prediction)")
    return _png(fig)
