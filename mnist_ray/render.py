"""What the commands show a person: lines and tables built from rows, the sample drawn in
text, the PNG, the report file. Each function returns what to print; cli.py prints it.

    from mnist_ray import render
    for piece in render.leaderboard(summary):   # str or rich Table
        out.print(piece)
    render.write_png(render.pixels(e), Path("sample.png"), "label 8, predicted 3")
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from rich.table import Table

from mnist_ray.output import add_column, as_table, cell


def trained(row: dict) -> list[str]:
    """`submit train`'s result for a person."""
    return [
        f"run {row['run_id']}: {row['epochs']} epochs on {row['device']} "
        f"(node {row['node_id'][:12]}) in {row['train_seconds']:.2f} s, "
        f"final cost {row['epoch_costs'][-1]:.9f}, peak memory {peak(row)}",
        f"weights {row['weights_uri']}",
    ]


def peak(row: dict) -> str:
    """The training task's peak memory: its process's RSS, and torch's GPU peak if it had one."""
    text = f"{row['peak_rss_mib']:.0f} MiB"
    if row.get("gpu_peak_mib") is not None:
        text += f" + {row['gpu_peak_mib']:.0f} MiB on the GPU"
    return text


def evaluated(row: dict) -> list[str]:
    """`evaluate`'s result: the accuracy, and what became of the random sample."""
    s = {k: row[f"sample_{k}"] for k in ("index", "label", "prediction", "probabilities")}
    p = s["probabilities"]
    return [
        f"evaluation {row['eval_id']} of run {row['run_id']}: accuracy {row['accuracy']:.4f} "
        f"({row['correct']}/{row['total']}) over {row['shards']} shard(s)",
        f"sample {s['index']}: label {s['label']}, predicted {s['prediction']} "
        f"(p={p[s['prediction']]:.3f}; p[{s['label']}]={p[s['label']]:.3f})",
    ]


def leaderboard(summary: dict) -> list:
    """A sweep, best first: only the parameters that vary, then the outcome of each trial."""
    trials, varying = summary["trials"], summary["varying"]
    evaluated = any(t["accuracy"] is not None for t in trials)
    validated = any(t.get("val_accuracy") is not None for t in trials)
    rows = []
    for rank, t in enumerate(trials, 1):
        cells = [str(rank), t["run_id"], *(cell(n, t[n]) for n in varying)]  # model: a name
        cells += [
            f"{t['final_cost']:.9f}" if t["final_cost"] is not None else "-",
            f"{t['train_seconds']:.2f}" if t["train_seconds"] is not None else "-",
            f"{t['peak_rss_mib']:.0f}" if t["peak_rss_mib"] is not None else "-",
        ]
        if validated:
            cells.append(f"{t['val_accuracy']:.4f}" if t["val_accuracy"] is not None else "-")
        if evaluated:
            cells.append(f"{t['accuracy']:.4f}" if t["accuracy"] is not None else "-")
        rows.append(cells)
    columns = ["#", "run_id", *varying, "final cost", "seconds", "peak MiB"]
    columns += ["val accuracy"] if validated else []
    columns += ["accuracy"] if evaluated else []
    if any(t["status"] != "finished" for t in trials):
        columns.append("status")
        for cells, t in zip(rows, trials, strict=True):
            cells.append(t["status"] + (f": {t['error']}" if t["error"] else ""))
    table = Table(title=f"sweep {summary['sweep_id']}", title_justify="left")
    for i, name in enumerate(columns):
        justify = "left" if name in ("run_id", "status") else "right"
        add_column(table, name, [r[i] for r in rows], justify=justify)
    for cells in rows:
        table.add_row(*cells)
    done = sum(t["status"] == "finished" for t in trials)
    best = f", best {summary['best_run_id']}" if summary["best_run_id"] else ""
    return [
        table,
        f"{done}/{len(trials)} trials finished in {summary['wall_seconds']:.1f} s{best}; "
        f"status {summary['status']}",
    ]


def same_in_every_run(same: dict) -> str:
    """The parameters every run shares, hidden from a table; one absent from every run
    (None: no sweep, say) is no parameter worth a word."""
    present = {k: v for k, v in same.items() if v is not None}
    return ", ".join(f"{k}={v}" for k, v in present.items())


def status(run: dict) -> str:
    """A run's status for a person: `interrupted at epoch 3` (its newest checkpoint; a
    failed run's cause is in --json and --csv, too long for a table cell)."""
    text = run.get("status") or "finished"
    if text != "finished" and run.get("checkpoint_epoch"):
        text += f" at epoch {run['checkpoint_epoch']}"
    return text


def results(location: str, view, eval_columns: list[str]) -> list[Table]:
    """`results`: the runs (parameters that differ, costs, accuracy) and their evaluations."""
    runs = [r | {"status": status(r)} for r in view.runs]
    table = as_table(f"runs in {location}", view.run_columns, runs)
    same = same_in_every_run(view.same)
    hidden = view.total - len(view.runs)
    lines = [
        f"same in every run: {same} (--all-columns shows them)" if same else "",
        f"{hidden} more run(s) match: --limit N, or --json/--csv for all" if hidden else "",
    ]
    table.caption = "\n".join(t for t in lines if t)
    table.caption_justify = "left"
    return [table, as_table(f"evaluations in {location}", eval_columns, view.evaluations)]


def compared(c: dict) -> list:
    """`compare`: the runs side by side, costs per epoch, and changes against the first run."""
    ids = [r["run_id"] for r in c["runs"]]
    columns = ["run_id", *c["differ"], "last_cost", "best_cost", "accuracy", "curve"]
    runs = c["runs"]
    if any(r.get("status", "finished") != "finished" for r in runs):
        columns.append("status")
        runs = [r | {"status": status(r)} for r in runs]
    pieces: list = [as_table("runs compared", columns, runs)]
    if same := same_in_every_run(c["same"]):
        pieces.append(f"same in every run: {same}")
    for group in c.get("identical_weights", []):
        pieces.append(f"identical weights (bit for bit): {' = '.join(group)}")
    epochs = [{"epoch": e["epoch"]} | {i: cell("cost", e[i]) for i in ids} for e in c["epochs"]]
    pieces.append(as_table("cost per epoch", ["epoch", *ids], epochs))
    for d in c["against_first"]:
        if d["per_class"] is None:
            pieces.append(
                f"{d['run_id']} vs {ids[0]}: no evaluation of both; run `mnist-ray evaluate`"
            )
            continue
        title = f"per-class accuracy, {d['run_id']} vs {ids[0]}"
        rows = [row | {"delta": f"{row['delta']:+.4f}"} for row in d["per_class"]]
        columns = ["class", "accuracy_first", "accuracy_other", "delta"]
        pieces.append(as_table(title, columns, rows))
        pieces.append(f"largest confusion changes, {d['run_id']} vs {ids[0]}:")
        pieces += [
            f"  true {x['true']} -> predicted {x['predicted']}: "
            f"{x['first']} -> {x['other']} ({x['delta']:+d})"
            for x in d["confusion"]
        ]
    return pieces


def compacted(summaries: list[dict]) -> list[str]:
    return [
        f"{s['table']}: {s['merged']} files -> 1 ({s['rows']} rows) {s['uri']}"
        if s["merged"]
        else f"{s['table']}: {s['files']} file(s), nothing to merge"
        for s in summaries
    ]


# ---- the sample -------------------------------------------------------------------------------


def pixels(evaluation: dict):
    """The evaluation's random test image as a 28x28 uint8 array."""
    import numpy as np

    return np.asarray(evaluation["sample_pixels"], dtype=np.uint8).reshape(28, 28)


def caption(evaluation: dict) -> str:
    return f"label {evaluation['sample_label']}, predicted {evaluation['sample_prediction']}"


def sample(evaluation: dict) -> list[str]:
    """`show`: the image in text, then label, prediction and a bar per class probability."""
    e = evaluation
    lines = [f"evaluation {e['eval_id']}, test image {e['sample_index']}"]
    lines += draw(pixels(e))
    lines.append(caption(e))
    for digit, p in enumerate(e["sample_probabilities"]):
        lines.append(f"  {digit}  {p:6.3f}  {'#' * round(p * 40)}")
    return lines


def draw(image) -> list[str]:
    """Two image rows per text line, each pixel column two characters wide: any terminal."""
    shades = " .:-=+*#%@"
    lines = []
    for r in range(0, image.shape[0], 2):
        top, bottom = image[r], image[r + 1]
        lines.append(
            "".join(
                shades[min(9, int(max(a, b)) * 10 // 256)] * 2
                for a, b in zip(top, bottom, strict=False)
            )
        )
    return lines


def write_png(image, path: Path, title: str) -> None:
    """The image as a PNG titled with its label and prediction; OSError when it can't be."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3))
    try:
        ax.imshow(image, cmap="Greys", interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
        _whole(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def write_file(text: str, path: Path) -> None:
    """Write `text` whole or not at all; OSError when it can't be."""
    _whole(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _whole(path: Path, write) -> None:
    """`write` to a temporary name beside `path`, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
