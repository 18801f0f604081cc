"""What else than the disease separates the classes: the confound report of a dataset version.

The study's data is the textbook case: every COVID-19 image comes from one collection and
every normal from another, so a classifier can score perfectly by recognising the source
(DeGrave, Janizek & Lee, Nature Machine Intelligence 2021). Per class, the report counts
images by source, view, sex, age band, file format, native bit depth, native size band and
colour mode, and the patients; it warns when one of those facts alone (nearly) tells the
classes apart, since a model can then learn that fact instead of the disease.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from covid_pipeline import layout, storage
from covid_pipeline.manifest import LABEL_NAMES
from covid_pipeline.shards import read_parquet

# (manifest column or derived fact, its name in the report)
FACTS: tuple[tuple[str, str], ...] = (
    ("source", "source"), ("view", "view"), ("sex", "sex"), ("age_band", "age band"),
    ("file_format", "file format"), ("bit_depth", "native bit depth"),
    ("size_band", "native size band"), ("colour_mode", "colour mode"),
)
# Facts a classifier can see in the pixels or the file (demographics are reported, not
# warned about: they are confounders of another kind).
ACQUISITION = ("source", "view", "file_format", "bit_depth", "size_band", "colour_mode")
NEARLY = 0.95  # a fact whose class guess reaches this balanced accuracy is a warning


def _bands(values: pd.Series, edges: list[float], labels: list[str]) -> pd.Series:
    return pd.cut(pd.to_numeric(values, errors="coerce"), bins=edges, labels=labels,
                  right=False).astype("string").fillna("unknown")


def facts_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per image: the class and every fact of :data:`FACTS` ("unknown" when absent,
    e.g. in a dataset version made before ingest recorded it)."""
    out = pd.DataFrame({"class": manifest["label"].map(LABEL_NAMES)})
    for col in ("source", "view", "sex", "file_format", "bit_depth", "colour_mode"):
        out[col] = (manifest[col].astype("string") if col in manifest
                    else pd.Series("unknown", index=manifest.index, dtype="string"))
    out["age_band"] = _bands(manifest.get("age", pd.Series(np.nan, index=manifest.index)),
                             [0, 20, 40, 60, 80, 200], ["<20", "20-39", "40-59", "60-79", "80+"])
    side = np.maximum(manifest.get("width", 0), manifest.get("height", 0))
    out["size_band"] = _bands(pd.Series(side, index=manifest.index).replace(0, np.nan),
                              [0, 512, 1024, 2048, 1e9], ["<512", "512-1023", "1024-2047",
                                                           "2048+"])
    return out.fillna("unknown")


def separability(facts: pd.DataFrame, fact: str) -> float:
    """Balanced accuracy of guessing the class from ``fact`` alone (each value → the class
    it is most frequent in, relative to the class's size): 1.0 means the fact tells the
    classes apart, 0.5 (two classes) that it says nothing, whatever the class sizes."""
    table = pd.crosstab(facts[fact], facts["class"])
    if table.empty:
        return 0.0
    rates = table / table.sum(axis=0)  # share of each class's images with each value
    guess = rates.idxmax(axis=1)
    return float(np.mean([rates.loc[guess == c, c].sum() for c in rates.columns]))


def warning_for(facts: pd.DataFrame, fact: str, name: str) -> str | None:
    """A plain warning when ``fact`` (nearly) separates the classes; None otherwise."""
    if facts["class"].nunique() < 2 or facts[fact].nunique() < 2:
        return None
    share = separability(facts, fact)
    if share < NEARLY:
        return None
    by_class = {c: sorted(g[fact].unique()) for c, g in facts.groupby("class")}
    values = "; ".join(f"{c}: {', '.join(map(str, v))}" for c, v in sorted(by_class.items()))
    if share == 1.0 and fact == "source":
        parts = [f"every {c} image comes from {' and '.join(map(str, v))}"
                 for c, v in sorted(by_class.items())]
        return (f"{' and '.join(parts)}: a model can score perfectly by telling the sources "
                "apart")
    degree = "perfectly" if share == 1.0 else f"with {share:.0%} balanced accuracy"
    return (f"the {name} alone tells the classes apart {degree} ({values}): a model can score "
            f"by recognising the {name}, not the disease")


def report(manifest: pd.DataFrame) -> dict[str, Any]:
    """The confound report of a manifest: counts per class and fact, patients per class,
    each acquisition fact's separability, and the warnings."""
    facts = facts_frame(manifest)
    counts = {name: {str(v): {str(c): int(n) for c, n in row.items()}
                     for v, row in pd.crosstab(facts[col], facts["class"]).iterrows()}
              for col, name in FACTS}
    patients = {str(c): int(n) for c, n in
                manifest.assign(cls=facts["class"]).groupby("cls")["patient_id"].nunique()
                .items()}
    images = {str(c): int(n) for c, n in facts["class"].value_counts().sort_index().items()}
    names = dict(FACTS)
    warnings = [w for col in ACQUISITION if (w := warning_for(facts, col, names[col]))]
    return {"images": images, "patients": patients, "counts": counts,
            "separability": {names[c]: separability(facts, c) for c in ACQUISITION},
            "warnings": warnings}


def to_markdown(rep: dict[str, Any], version: str) -> str:
    """The report as Markdown: warnings first, then one table per fact."""
    classes = sorted(rep["images"])
    lines = [f"# Confounds of dataset `{version}`", ""]
    if rep["warnings"]:
        lines += [f"> **Warning:** {w}." for w in rep["warnings"]] + [""]
    else:
        lines += ["No acquisition fact alone separates the classes.", ""]
    lines += ["| | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes),
              "| images | " + " | ".join(str(rep["images"][c]) for c in classes) + " |",
              "| patients | " + " | ".join(str(rep["patients"].get(c, 0)) for c in classes)
              + " |", ""]
    for name, values in rep["counts"].items():
        share = rep["separability"].get(name)
        title = f"## {name}" + (f" (tells the classes apart with {share:.0%} balanced "
                                 "accuracy)" if share else "")
        lines += [title, "", f"| {name} | " + " | ".join(classes) + " |",
                  "|---|" + "---:|" * len(classes)]
        for value, per_class in values.items():
            lines.append(f"| {value} | " + " | ".join(str(per_class.get(c, 0)) for c in classes)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(dataset_uri: str, version: str) -> dict[str, Any]:
    """Write ``confounds.json`` and ``confounds.md`` beside the dataset version's manifest;
    return the report (with its Markdown under ``markdown``)."""
    rep = report(read_parquet(layout.dataset_manifest(dataset_uri)))
    markdown = to_markdown(rep, version)
    storage.write_json(layout.confounds(dataset_uri, "json"), rep)
    storage.write_text(layout.confounds(dataset_uri, "md"), markdown)
    return {**rep, "markdown": markdown}
