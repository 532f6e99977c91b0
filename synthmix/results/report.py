"""``synthmix report``: one self-contained HTML page per study (tables, plots, generators).

The page embeds everything (plots and sample grids as base64 PNGs), so it can be mailed or
attached to a paper's supplement. Pure functions over the results table and the study folder;
no Ray. Written with the standard library's ``html`` escaping rather than a template engine:
the page is one short, fixed layout.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

import pandas as pd

from synthmix.results.analysis import analyse
import pyarrow.fs as pafs

from synthmix.results.store import ResultsError, read_results, read_subject_results, resolve_source
from synthmix.results.tables import footer, render

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;overflow-x:auto}img{max-width:100%}
.sig{font-weight:bold}"""

MAX_STRATA = 3  # metadata columns the report stratifies per-subject results by
_COMPARISON_COLUMNS = ["n", "mean", "std", "baseline_mean", "diff", "ci_low", "ci_high", "cohens_d_pooled",
                       "cohens_dz", "test", "p_value", "p_adjusted", "significant"]


def write_report(source: str, out: str | Path, *, storage: str | None = None, metric: str = "dice_mean",
                 test: str = "auto", correction: str = "holm", alpha: float = 0.05,
                 baseline: str | dict | None = None) -> Path:
    """Write the HTML report of a study (name, folder or URI) to ``out``; return its path."""
    results = read_results(source, storage=storage)
    analysis = analyse(results, metric=metric, test=test, correction=correction, alpha=alpha, baseline=baseline)
    fs, folder = resolve_source(source, storage)
    sections = [f"<h1>synthmix study {html.escape(_study_name(results, source))}</h1>",
                _summary(results), "<h2>Results</h2>", f"<pre>{html.escape(render(analysis, 'table'))}</pre>",
                _comparisons(analysis), _generator_comparison(results, analysis, fs, folder),
                _plots(analysis), _classes(results),
                _subjects(source, storage, metric=metric, correction=correction, alpha=alpha, baseline=baseline),
                _tuning(fs, folder), _choices(fs, folder), _generators(fs, folder), _failures(results)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>synthmix report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # --out may name a new folder
    out.write_text(page)
    return out


def _study_name(results, source: str) -> str:
    table = results.rows
    return str(table["study"].iloc[0]) if "study" in table and len(table) else str(source)


def _summary(results) -> str:
    planned = len(results.plan) if results.plan is not None else None
    rows = len(results.rows)
    text = f"{rows} results rows" + (f" of {planned} planned cells" if planned is not None else "")
    return f"<p>{html.escape(text)}; factors: {html.escape(', '.join(results.factors))}</p>"


def _comparisons(analysis) -> str:
    records = pd.DataFrame(analysis.to_records())
    if "baseline" in records:
        records = records[records["baseline"] != True]  # noqa: E712 (a column of True/NaN)
    if records.empty:
        return ""
    keep = [f for f in analysis.factors if f in records] + [c for c in _COMPARISON_COLUMNS if c in records]
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in footer(analysis))
    return (f"<h3>Comparisons with the baseline</h3>{records[keep].to_html(index=False, float_format='%.4g')}"
            f"<ul>{notes}</ul>")


def _classes(results) -> str:
    """Factor ``classes``: per level, the mean test Dice of each of its own classes (named as
    the level names them), per combination of the other factors."""
    rows = results.rows
    if "classes" not in results.factors or "class_names" not in rows or rows.empty:
        return ""
    others = [f for f in results.factors if f != "classes" and f in rows and rows[f].nunique() > 1]
    parts = ["<h2>Per class, by classes level</h2>"]
    for level in dict.fromkeys(rows["classes"].tolist()):
        at = rows.loc[rows["classes"] == level]
        names = json.loads(at["class_names"].dropna().iloc[0]) if at["class_names"].notna().any() else []
        columns = {f"dice_{c}": name for c, name in enumerate(names) if c and f"dice_{c}" in at}
        if not columns:
            continue
        table = (at.groupby(others, sort=False)[list(columns)].mean() if others else at[list(columns)].mean().to_frame().T)
        table = table.rename(columns=columns)
        table.insert(0, "n", at.groupby(others, sort=False).size() if others else len(at))
        parts.append(f"<h3>classes {html.escape(str(level))}: {len(names)} classes</h3>"
                     f"{table.to_html(float_format='%.4g')}")
    parts.append("<p>Test Dice per class (mean over the cells' rows); each level trains, validates and tests "
                 "on its own remapping of the dataset's labels, from one generator per subset.</p>")
    return "".join(parts)


def _png(path: Path) -> str:
    return _img(Path(path).read_bytes())


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _subjects(source: str, storage: str | None, **options) -> str:
    """Per-subject results when the study has them: the table paired by subject, its box plot,
    and the table stratified by each of the first metadata columns."""
    from synthmix.results.subjects import analyse_subjects, metadata_columns

    try:
        subjects = read_subject_results(source, storage=storage)
    except ResultsError:
        return ""  # rows written before per-subject results existed
    analysis = analyse_subjects(subjects, **options)
    parts = ["<h2>Per-subject results</h2>", f"<pre>{html.escape(render(analysis, 'table'))}</pre>",
             _plots(analysis, kinds=("box",))]
    for column in metadata_columns(subjects.rows, [*subjects.factors, *analysis.factors])[:MAX_STRATA]:
        try:
            strata = analyse_subjects(subjects, by=column, **options)
        except ResultsError as err:
            parts.append(f"<p>(not stratified by {html.escape(column)}: {html.escape(str(err))})</p>")
            continue
        parts += [f"<h3>By {html.escape(column)}</h3>", f"<pre>{html.escape(render(strata, 'table'))}</pre>"]
    return "".join(parts)


def _plots(analysis, kinds: tuple[str, ...] = ("line", "box")) -> str:
    from synthmix.results.plots import plot

    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            try:
                images.append(_png(Path(plot(analysis, Path(tmp) / f"{kind}.png", kind=kind))))
            except Exception as err:  # a plot that does not apply (e.g. no numeric x) is skipped
                images.append(f"<p>({kind} plot not drawn: {html.escape(str(err))})</p>")
    return ("<h2>Plots</h2>" if len(kinds) > 1 else "") + "".join(images)


def _tuning(fs: pafs.FileSystem, folder: str) -> str:
    """The tuning stage: its trials best first, the frozen winner, Optuna's charts."""
    from synthmix.results.tuning import has_tuning, load_tuning, render_trials, tuning_figures

    if not has_tuning(fs, folder):
        return ""
    results = load_tuning(fs, folder)
    charts = tuning_figures(results) if results.best else {}
    images = "".join(f"<h3>{html.escape(title.capitalize())}</h3>" +
                     (_img(chart) if isinstance(chart, bytes) else f"<p>({html.escape(chart)})</p>")
                     for title, chart in charts.items())
    return (f"<h2>Tuning stage (validation subjects only)</h2><pre>{html.escape(render_trials(results))}</pre>"
            f"{images}")


def _choices(fs: pafs.FileSystem, folder: str) -> str:
    """Model selection (``generator.choose``): per subset, its candidates' scores and ranks and
    the one chosen."""
    from synthmix.results.choices import choice_table, read_choices

    records = read_choices(fs, folder)
    if not records:
        return ""
    parts = []
    for r in records:
        criteria = "; ".join(f"{html.escape(n)}: {html.escape(c['figure'])} "
                             f"({'lower' if c['lower_is_better'] else 'higher'} is better)"
                             for n, c in r["criteria"].items())
        chosen = r["candidates"][r["chosen"]]
        parts.append(f"<h3>fold {r['fold']}, repeat {r['repeat']}, amount {r['amount']:g} "
                     f"({len(r['subjects'])} training subjects)</h3>"
                     f"<p>chosen: candidate {r['chosen']} {html.escape(json.dumps(chosen['overrides'], sort_keys=True))} "
                     f"(generator {html.escape(r['chosen_key'])}), lowest mean rank of {criteria}</p>"
                     + choice_table(r).to_html(index=False, float_format="%.4g", na_rep=""))
    return ("<h2>Generator model selection</h2><p>One configuration chosen per subset by mean rank "
            "(1 = best) on figures from the subset's training slices only.</p>" + "".join(parts))


FIGURES = ("swd", "swd_sd", "swd_gap", "swd_gap_se", "swd_vs_floor", "fcn_dice_mean", "blur", "nn_distance")


def _read(fs: pafs.FileSystem, path: str) -> bytes | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _pools_by_generator(fs: pafs.FileSystem, folder: str) -> dict[str, list[dict]]:
    selector = pafs.FileSelector(f"{folder}/artifacts/pools", allow_not_found=True)
    pools: dict[str, list[dict]] = {}
    for info in fs.get_file_info(selector):
        raw = _read(fs, f"{info.path}/pool.json") if info.type == pafs.FileType.Directory else None
        if raw:
            pool = json.loads(raw)
            pools.setdefault(pool.get("generator", ""), []).append(pool)
    return pools


def _generator_section(key: str, quality: dict, spec: dict, pools: list[dict], grids: tuple) -> str:
    """One generator: its figures next to the untrained network's and real data's (the floor),
    its snapshot scores, each pool step's counts, and real | synthetic sample grids."""
    table = pd.DataFrame({part: {f: quality.get(f + suffix) for f in FIGURES}
                          for part, suffix in (("trained", ""), ("untrained", "_untrained"), ("real (floor)", "_real"))})
    selection = spec.get("selection") or quality.get("selection") or {}
    snaps = ", ".join(f"{s['step']}: {s['score']:.4g}" for s in selection.get("snapshots", []))
    chosen = (f"<p>select by {html.escape(str(selection.get('by')))}: kept step {selection.get('chosen_step')}"
              + (f" of snapshots {html.escape(snaps)}" if snaps else "") + "</p>") if selection else ""
    pool_html = "".join(
        f"<p>pool {html.escape(p['key'][:12])}: drawn {p['drawn']}, kept {p['kept']}; "
        + "; ".join(f"{html.escape(st['name'])} removed {st['removed']}" for st in p.get("steps", [])) + "</p>"
        for p in pools)
    real, synthetic = grids
    side = "".join(f"<div style='display:inline-block;vertical-align:top;max-width:49%'>{_img(g)}</div>"
                   for g in (real, synthetic) if g)
    family = html.escape(str(spec.get("family", "")))
    return (f"<h3>{family} {html.escape(key)}</h3>{table.to_html(float_format='%.4g', na_rep='')}{chosen}"
            f"{pool_html}<p>Left: real training slices; right: samples.</p>{side}")


def _generators(fs: pafs.FileSystem, folder: str) -> str:
    """Per trained generator: quality figures with their floors, snapshot scores, pool counts,
    and real and synthetic sample grids side by side."""
    selector = pafs.FileSelector(f"{folder}/artifacts/generators", allow_not_found=True)
    keys = sorted(info.base_name for info in fs.get_file_info(selector) if info.type == pafs.FileType.Directory)
    pools, sections = _pools_by_generator(fs, folder), []
    for key in keys:
        base = f"{folder}/artifacts/generators/{key}"
        raw = _read(fs, f"{base}/quality.json")
        if raw is None:
            continue  # not finished
        spec = json.loads(_read(fs, f"{base}/generator.json") or b"{}")
        grids = (_read(fs, f"{base}/real.png"), _read(fs, f"{base}/samples.png"))
        sections.append(_generator_section(key, json.loads(raw), spec, pools.get(key, []), grids))
    return f"<h2>Generators</h2>{''.join(sections)}" if sections else ""


def _generator_comparison(results, analysis, fs: pafs.FileSystem, folder: str) -> str:
    """A study with factor generator: one row per level with its generators' quality figures
    and floors, the paired Dice differences against the shared baseline, and one sample grid
    per level side by side (``generator_comparison``)."""
    from synthmix.results import generator_comparison as gc

    rows = results.rows
    if not gc.has_generator_factor(results.factors, rows):
        return ""
    quality = gc.quality_table(rows)
    if quality.empty:
        return ""
    keys = gc.grid_keys(rows, _real_factor(results.factors))
    families = {level: json.loads(_read(fs, f"{folder}/artifacts/generators/{key}/generator.json") or b"{}").get("family", "")
                for level, key in keys.items()}
    quality.insert(1, "family", quality["generator"].map(families).fillna(""))
    dice = gc.dice_differences(analysis, _real_factor(results.factors))
    grids = "".join(
        f"<div style='display:inline-block;vertical-align:top;width:{max(100 // (len(keys) + 1), 15)}%'>"
        f"<p>{html.escape(str(name))}</p>{_img(png)}</div>"
        for name, png in [("real", _read(fs, f"{folder}/artifacts/generators/{next(iter(keys.values()))}/real.png")),
                          *[(level, _read(fs, f"{folder}/artifacts/generators/{key}/samples.png")) for level, key in keys.items()]]
        if png)
    legend = "".join(f"<li>{html.escape(f)}: {html.escape(what)}</li>" for f, what in gc.FIGURES)
    dice_html = (f"<h3>Paired {html.escape(analysis.metric)} difference against the shared baseline</h3>"
                 f"{dice.to_html(classes='generator-dice')}<p>difference [{(1 - analysis.alpha) * 100:g}% CI] "
                 f"and p after {html.escape(analysis.correction)} correction; test: {html.escape(analysis.test_label)}</p>"
                 if not dice.empty else "")
    return (f"<h2>Generator comparison</h2>{quality.to_html(index=False, float_format='%.4g', na_rep='', classes='generator-comparison')}"
            f"<p>Means over each level's generators (one per subset); real: the floor, untrained: the same network "
            f"before training.</p><ul>{legend}</ul>{dice_html}"
            f"<h3>Samples (largest real amount, first resample)</h3>{grids}")


def _real_factor(factors: list[str]) -> str:
    return next((f for f in factors if f in ("real_fraction", "real_count")), "real_fraction")


def _failures(results) -> str:
    failed = getattr(results, "failed", None) or []
    if not failed:
        return ""
    items = "".join(f"<li>{html.escape(str(c))}</li>" for c in sorted(failed))
    return f"<h2>Failed cells</h2><ul>{items}</ul>"
