"""C-MAPSS benchmark: train and evaluate each subset over seeds, beside the published table.

    .venv/bin/python bench/models.py                      # all four subsets, 3 seeds
    .venv/bin/python bench/models.py --subset FD001 --seeds 1
    .venv/bin/python bench/models.py --subset FD003 --seeds 1 --keep   # add to the table
    .venv/bin/python bench/models.py --quick              # tiny smoke run
    .venv/bin/python bench/models.py --resume             # reuse finished (subset, seed) runs

Writes bench/results/models.json and bench/results/models.md. Every finished (subset, seed)
run is also kept in bench/results/models-runs/ with its training configuration; `--resume`
reuses a kept run whose configuration is unchanged, so a long table (FD002/FD004 take ~30 min
per seed on 2 cores) can be built over several interrupted invocations.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import RESULTS_DIR, BenchResult, parse_args

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
TARGET_FD001_RMSE = 13.5
RUNS_DIR = RESULTS_DIR / "models-runs"


def configure(parser) -> None:
    parser.add_argument("--subset", action="append", choices=SUBSETS, help="repeatable")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per subset (default 3)")
    parser.add_argument("--epochs", type=int, help="max epochs (default: the model config)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the previous results of subsets not run now (bench/results/models.json)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse kept (subset, seed) runs whose training configuration is unchanged",
    )


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def config_fingerprint(subset: str, seed: int, epochs: int | None) -> str:
    from models.config import TrainConfig

    config = TrainConfig.for_subset(subset, seed=seed)
    if epochs is not None:
        config = config.with_(epochs=epochs)
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_once(subset: str, seed: int, epochs: int | None, quick: bool, registry) -> dict:
    from models.train import train_subset

    started = time.monotonic()
    result = train_subset(
        subset,
        epochs=2 if quick else epochs,
        seed=seed,
        registry=registry,
        machines=10 if quick else None,
        progress=lambda line: print(f"  [{subset} seed {seed}] {line}", flush=True),
    )
    return {
        "subset": subset,
        "seed": seed,
        "test": result.metrics["test"],
        "validation_rmse": result.metrics["validation"]["rmse"],
        "member_validation_rmse": result.metrics["validation"].get("members"),
        "epochs_run": result.epochs_run,
        "train_seconds": round(time.monotonic() - started, 1),
        "version": result.version,
    }


def kept_run(subset: str, seed: int, fingerprint: str) -> dict | None:
    path = RUNS_DIR / f"{subset}-seed{seed}.json"
    if not path.is_file():
        return None
    run = json.loads(path.read_text())
    return run if run.get("config_fingerprint") == fingerprint else None


def keep_run(run: dict) -> None:
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    path = RUNS_DIR / f"{run['subset']}-seed{run['seed']}.json"
    path.write_text(json.dumps(run, indent=2, default=float))


def run_seed(subset: str, seed: int, args, registry) -> dict:
    if args.quick:
        return train_once(subset, seed, args.epochs, True, registry)
    fingerprint = config_fingerprint(subset, seed, args.epochs)
    if args.resume and (run := kept_run(subset, seed, fingerprint)) is not None:
        print(f"  [{subset} seed {seed}] kept run reused (RMSE {run['test']['rmse']:.2f})")
        return run
    run = train_once(subset, seed, args.epochs, False, registry)
    keep_run({**run, "config_fingerprint": fingerprint})
    return run


def run_subset(subset: str, seeds: int, args, registry) -> dict:
    from models.config import TrainConfig

    config = TrainConfig.for_subset(subset)
    runs = [run_seed(subset, seed, args, registry) for seed in range(seeds)]
    test = [run["test"] for run in runs]
    return {
        "rmse": spread([t["rmse"] for t in test]),
        "score": spread([t["score"] for t in test]),
        "mae": spread([t["mae"] for t in test]),
        "rmse_uncapped": spread([t["rmse_uncapped"] for t in test]),
        "f1_fails_within_30": spread([t["fails_within_30"]["f1"] for t in test]),
        "validation_rmse": spread([run["validation_rmse"] for run in runs]),
        "member_validation_rmse": [run["member_validation_rmse"] for run in runs],
        "epochs_run": [run["epochs_run"] for run in runs],
        "train_seconds": [run["train_seconds"] for run in runs],
        "versions": [run["version"] for run in runs],
        "seeds": list(range(seeds)),
        "ensemble": config.ensemble,
        "train_stride": config.train_stride,
    }


def previous_figures() -> dict:
    path = RESULTS_DIR / "models.json"
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    return {} if previous.get("quick") else previous.get("figures", {})


def markdown(figures: dict, published: list[dict]) -> str:
    lines = [
        "# prognos LSTM on C-MAPSS beside published results",
        "",
        "RMSE / PHM08 score on the last cycle of each test engine; prognos: mean ± std over "
        "the seeds named in each cell; truth capped at 125 like the training target "
        "(uncapped RMSE in the JSON).",
        "",
        "| method | " + " | ".join(SUBSETS) + " |",
        "|---|" + "---|" * len(SUBSETS),
    ]
    ours = []
    for subset in SUBSETS:
        if subset in figures:
            rmse, score = figures[subset]["rmse"], figures[subset]["score"]
            count = len(figures[subset].get("seeds", rmse["runs"]))
            ours.append(
                f"**{rmse['mean']:.2f} ± {rmse['std']:.2f} / {score['mean']:.0f}** "
                f"({count} seed{'s' if count > 1 else ''})"
            )
        else:
            ours.append("not run")
    lines.append("| **prognos LSTM (this run)** | " + " | ".join(ours) + " |")
    for row in published:
        cells = [
            f"{row[s]['rmse']:.2f} / {row[s]['score']:.0f}" if s in row else "" for s in SUBSETS
        ]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    for key, label in (
        ("ensemble", "LSTMs averaged per prognos model"),
        ("train_stride", "Training windows end every N cycles"),
    ):
        cells = [f"{s} {figures[s][key]}" for s in SUBSETS if key in figures.get(s, {})]
        if cells:
            lines += ["", f"{label}: " + ", ".join(cells) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from models.card import published_table
    from prognos.core.registry import FilesystemRegistry

    args = parse_args(__doc__.splitlines()[0], configure)
    subsets = args.subset or list(SUBSETS)
    seeds = 1 if args.quick else args.seeds
    bench = BenchResult("models", args.quick)
    published = published_table()
    bench.reference = {"published": published}
    with tempfile.TemporaryDirectory(prefix="prognos-bench-registry-") as root:
        registry = FilesystemRegistry(root)
        for subset in subsets:
            print(f"{subset}: {seeds} seed(s)", flush=True)
            bench.figures[subset] = run_subset(subset, seeds, args, registry)
    if args.keep:
        for subset, figures in previous_figures().items():
            bench.figures.setdefault(subset, figures)
    if "FD001" in bench.figures:
        value = bench.figures["FD001"]["rmse"]["mean"]
        if args.quick:
            bench.check("FD001 test RMSE sanity (quick, tiny)", value, "<=", 40.0)
        else:
            bench.check("FD001 test RMSE (mean over seeds)", value, "<=", TARGET_FD001_RMSE)
    for subset, figures in bench.figures.items():
        bench.notes.append(
            f"{subset}: RMSE {figures['rmse']['mean']:.2f} ± {figures['rmse']['std']:.2f}, "
            f"score {figures['score']['mean']:.0f}, uncapped RMSE "
            f"{figures['rmse_uncapped']['mean']:.2f}"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "models.md").write_text(markdown(bench.figures, published))
    bench.finish()


if __name__ == "__main__":
    main()
