"""Reports from result TSVs (read back by `certify.outcomes`): attack runs beside certified ones, and
``analyze``, which writes the tables (`certify.tables`), the curves (`certify.plots`) and, if asked, a
grid of noisy and denoised samples (`certify.samples`) into a folder, never through a symbolic link.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .outcomes import RunResult, load_result, pair, run_names, violations
from .results import refuse_links, write_atomic
from .tables import (csv_text, default_radii, envelope_note, high_probability_table, latex_table, markdown_table,
                     per_image_table, predictions_table, summarize)

#: every file a report may write into its folder, each through `certify.results.write_atomic` (a temporary
#: file renamed into place: a link planted there is replaced, never written through)
REPORT_FILES = ("table.md", "table.csv", "table.tex", "per_image.csv", "high_probability.md", "predictions.md", "empirical.md",
                "curves.png", "samples.png", "README.md")


ATTACK_LEGEND = (
    "Robust accuracy (%) at L2 radius r, from both sides. certified: CERTIFY's certificates (a lower bound). "
    "not broken: the images the SmoothAdv attack did not break, i.e. PREDICT returned no other class than the "
    "label at the clean image and at the attack's point for r (an upper bound; an abstention shows nothing "
    "either way). PREDICT = label: Salman et al.'s stricter count, where an abstention is an error. A "
    "violation is an image certified at radius r that an attack with eps < r broke.")


def empirical_table(results: Sequence[RunResult], attacks: Sequence[RunResult]) -> tuple[list[str], list[list], list[str]]:
    """Certified and empirical (SmoothAdv) accuracy (%) at each attacked radius, two rows per attack run,
    and the violations found (`violations`); a certified row only where a run of the same g was given."""
    grid = sorted({0.0, *(e for a in attacks for e in a.eps)})
    header = ["run", "curve", "images"] + [f"r={r:g}" for r in grid] + ["violations"]
    rows, found = [], []
    for att in attacks:
        paired = pair(att, results)
        bad = violations(paired, att) if paired is not None else None
        if paired is not None:
            found += [f"{att.name}: {v}" for v in bad]
            rows.append([paired.name, "certified", paired.m] + [round(100 * paired.certified_accuracy(r), 1) for r in grid]
                        + [""])
        rows.append([att.name, "not broken by SmoothAdv (upper bound)", att.m]
                    + [round(100 * att.robust_accuracy(r), 1) for r in grid] + [len(bad) if bad is not None else "not paired"])
        rows.append([att.name, "PREDICT = label there (Salman et al.)", att.m]
                    + [round(100 * att.robust_accuracy(r, strict=True), 1) for r in grid] + [""])
    return header, rows, found


def refuse_report_links(out_dir: Path) -> None:
    """A clear error, before anything is written, when a report file in ``out_dir`` is a symbolic link (a link
    inside could send our output anywhere; the folder itself may be one: where a report goes is the user's)."""
    refuse_links(*(Path(out_dir) / name for name in REPORT_FILES))


def analyze(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, radii: Sequence[float] | None = None,
            names: Sequence[str] | None = None, samples: bool = False, device: str | None = None) -> dict:
    """Write ``table.md``, ``table.csv``, ``table.tex``, ``high_probability.md`` and ``curves.png`` for
    result files (``predictions.md`` for PREDICT runs, ``empirical.md`` for attack runs beside their
    certified curves; ``samples.png`` with ``samples``: each run's denoiser rebuilt from its manifest).

    The default grid follows what the runs can certify (`certify.tables.default_radii`); rows are named
    after the files (`run_names`) unless ``names`` are given; no file is written through a link.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.tsv").write_text("idx\\tlabel\\tpredict\\tradius\\tcorrect\\ttime\\n0\\t1\\t1\\t0.6\\t1\\t0.1\\n")
    >>> analyze([d / "a.tsv"], d / "report")["rows"][0][3:5]
    [100.0, 100.0]
    """
    if not paths:
        raise ValueError("analyze needs at least one result TSV")
    if names and len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(paths)} file(s); give one per file")
    if names and len(set(names)) < len(names):
        raise ValueError(f"--names must differ from each other, got {list(names)}")
    if radii is not None and not all(math.isfinite(r) and r >= 0 for r in radii):
        raise ValueError(f"radii must be finite numbers >= 0, got {list(radii)}")
    if samples:
        from .pipeline import default_device

        default_device(device)  # a mistyped --device is one error, before anything is written
    loaded = [load_result(p, n) for p, n in zip(paths, list(names) if names else run_names(paths))]
    results = [r for r in loaded if r.mode not in ("predict", "attack")]
    predictions = [r for r in loaded if r.mode == "predict"]
    attacks = [r for r in loaded if r.mode == "attack"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refuse_report_links(out_dir)
    summary: dict = dict(header=[], rows=[], out_dir=str(out_dir), predictions=None, attacks=None, note="", samples=None)
    if attacks:
        a_header, a_rows, found = empirical_table(results, attacks)
        verdict = ("\n".join(f"- VIOLATION {v}" for v in found) if found else
                   "No image certified at radius r was broken (PREDICT returned another class) by an attack with eps < r.")
        write_atomic(out_dir / "empirical.md", ATTACK_LEGEND + "\n\n" + markdown_table(a_header, a_rows) + "\n" + verdict + "\n")
        summary["attacks"] = {"header": a_header, "rows": a_rows, "violations": found}
    if predictions:
        p_header, p_rows = predictions_table(predictions)
        write_atomic(out_dir / "predictions.md", "Smoothed predictions (PREDICT: no radius, not certificates)\n\n"
                     + markdown_table(p_header, p_rows))
        summary["predictions"] = {"header": p_header, "rows": p_rows}
    if not results and not attacks:
        return summary
    radii = tuple(radii) if radii else default_radii(results or attacks)
    from .plots import plot_curves

    reach = [*radii, *(e for a in attacks for e in a.eps)]
    plot_curves(results, out_dir / "curves.png", max_radius=max(reach) if reach else None, attacks=attacks)
    if samples:
        from .samples import samples_from_manifests

        summary["samples"] = samples_from_manifests(results, out_dir / "samples.png", device=device)
    if not results:
        return summary
    header, rows = summarize(results, radii)
    note = envelope_note(results)
    write_atomic(out_dir / "table.md", markdown_table(header, rows) + (f"\n{note}\n" if note else ""))
    write_atomic(out_dir / "table.csv", csv_text(header, rows))
    write_atomic(out_dir / "table.tex", latex_table(results, radii))
    write_atomic(out_dir / "per_image.csv", csv_text(*per_image_table(results)))
    write_atomic(out_dir / "high_probability.md", "Certified accuracy (%) that holds with probability >= 99.9% over "
                 "the choice of images\n\n" + markdown_table(*high_probability_table(results, radii)))
    summary.update(header=header, rows=rows, note=note)
    return summary
