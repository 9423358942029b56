"""Print a Markdown table of every bar in ``benchmarks/results/*.json`` (pasted into the README).

    python benchmarks/summarize.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    print("| benchmark | bar | value | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        for b in data.get("bars", []):
            value = b["value"]
            shown = f"{value:.4g}" if isinstance(value, (int, float)) and value is not None else str(value)
            met = b.get("met")
            print(f"| `{path.stem}` | `{b['name']}` | {shown} | {b['op']} {b['target']} | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
