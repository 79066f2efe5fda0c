"""Model card (JSON + Markdown): our figures beside the published C-MAPSS table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prognos.core.settings import get_settings

PUBLISHED_FILE = "PUBLISHED_RESULTS.md"


def published_table(data_dir: Path | None = None) -> list[dict]:
    """Rows of the vendored published-results table: method and RMSE/score per subset."""
    path = Path(data_dir or get_settings().data_dir) / PUBLISHED_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("method", "") or set(cells[1]) <= {"-"}:
            continue
        row = {"method": cells[0]}
        for subset, cell in zip(("FD001", "FD002", "FD003", "FD004"), cells[1:], strict=True):
            match = re.match(r"\s*([\d.]+)\s*/\s*([\d.]+)", cell)
            if match:
                row[subset] = {"rmse": float(match[1]), "score": float(match[2])}
        rows.append(row)
    return rows


def model_card(metadata: dict, published: list[dict]) -> dict:
    subset = metadata["params"]["subset"]
    return {
        "model": metadata.get("model"),
        "subset": subset,
        "params": metadata["params"],
        "metrics": metadata["metrics"],
        "feature_version": metadata.get("feature_version"),
        "training_data": metadata.get("training_data"),
        "published": [
            {"method": row["method"], **row[subset]} for row in published if subset in row
        ],
    }


def card_markdown(card: dict) -> str:
    test = card["metrics"]["test"]
    subset = card["subset"]
    lines = [
        f"# Model card: {card['model']} ({subset})",
        "",
        f"LSTM {card['params']['lstm_units']}, window {card['params']['window']}, "
        f"RUL cap {card['params']['feature']['rul_cap']}, seed {card['params']['seed']}, "
        f"feature version {card['feature_version']}.",
        "",
        "Validation RMSE (held-out training machines): "
        f"{card['metrics']['validation']['rmse']:.2f}",
        "",
        f"## Test engines, last cycle vs RUL_{subset}",
        "",
        "| method | RMSE | PHM08 score |",
        "|---|---|---|",
        f"| **prognos (this version)** | **{test['rmse']:.2f}** | **{test['score']:.0f}** |",
    ]
    lines += [
        f"| {row['method']} | {row['rmse']:.2f} | {row['score']:.0f} |" for row in card["published"]
    ]
    fails = next(value for key, value in test.items() if key.startswith("fails_within_"))
    lines += [
        "",
        f"{test['count']} test engines; truth capped at the RUL cap like the training target "
        f"(uncapped RMSE {test.get('rmse_uncapped', float('nan')):.2f}).",
        f"MAE {test['mae']:.2f}. Fails within horizon: precision {fails['precision']:.2f}, "
        f"recall {fails['recall']:.2f}, F1 {fails['f1']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def write_card(directory: Path, metadata: dict) -> None:
    card = model_card(metadata, published_table())
    (directory / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (directory / "model_card.md").write_text(card_markdown(card))
