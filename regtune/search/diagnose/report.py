"""Diagnose, part 3: findings in plain language and the report (report.md, report.html,
diagnosis.json, next_space.yaml) with the figures and the best/diverged trials' overlays."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import yaml

from ..amortised import report_figures as amortised_figures
from ..outcome import rank_key
from .analysis import Diagnosis
from .rules import no_motion_cause
from .trials import COLOURS, DIVERGED, NO_MOTION, TOO_SHORT
from .figures import optuna_plots, plot_curves, plot_importances, plot_parallel, plot_scatter


def _ranked(trials):
    """Best first, by the one ranking (the trial's score)."""
    return sorted(trials, key=lambda t: rank_key(t.metrics.get("best_score"), t.trial_id))


def _rule(s: dict) -> str:
    return (f"`{s['rule']}` puts {s['correct']}/{s['n']} trials on the right side "
            f"(majority-class baseline: {s['baseline']}/{s['n']})")


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def explain(d: Diagnosis) -> list[str]:
    """Plain-language findings, most important first."""
    lines = []
    n_div = sum(t.cls in DIVERGED for t in d.trials)
    counts = d.counts()
    lines.append(f"{len(d.trials)} trials: " + ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda x: -x[1])) + ".")
    if n_div and d.separators:
        s = d.separators[0]
        if s["beats_baseline"]:
            lines.append(f"Divergence is best explained by **{s['param']}**: {_rule(s)}.")
        else:
            lines.append(f"No single parameter explains divergence better than the majority-class baseline "
                         f"(best rule: {_rule(s)}).")
        if d.importance_divergence:
            top = next(iter(d.importance_divergence))
            lines.append(f"Optuna's fANOVA importance for divergence ranks **{top}** first "
                         f"({d.importance_divergence[top]:.2f} of the total).")
        div_tr = [t for t in d.trials if t.cls in DIVERGED]
        reasons = sorted({t.reason.split(' at step')[0] for t in div_tr if t.reason})
        if reasons:
            lines.append("What the diverged trials reported: " + "; ".join(reasons[:4]) + ".")
    elif not n_div:
        lines.append("No trial diverged: the searched region is stable.")
    nm = [t for t in d.trials if t.cls == NO_MOTION]
    if nm:
        causes: dict[str, list[str]] = {}
        for t in nm:
            causes.setdefault(d.no_motion_why.get(t.trial_id, "").split(" (")[0] or "cause not identified", []).append(t.trial_id)
        cause = no_motion_cause(d.no_motion_rules)
        rule = next((r for r in d.no_motion_rules if r["beats_baseline"]), None)
        lines.append(f"{len(nm)} trial(s) stayed flat at the no-registration Dice ({d.noreg_dice:.3f}): "
                     + "; ".join(f"**{c}**: {', '.join(ids)}" for c, ids in causes.items())
                     + (f" (the best single rule, {_rule(rule)}, " + (f"points to {cause})" if cause else
                        f"sets them apart, but regtune names no cause on that side of {rule['param']})") if rule else "")
                     + ".")
    ts = [t for t in d.trials if t.cls == TOO_SHORT]
    if ts:
        lines.append(f"{len(ts)} trial(s) were **too short**, not over-regularised: near the no-registration Dice but still "
                     f"improving at their last epoch (" + "; ".join(_fmt_params(t.params) for t in ts[:3])
                     + "); a longer budget (promote:) would tell where they end.")
    fo = [t for t in d.trials if t.cls == "folding"]
    if fo:
        rule = next((r for r in d.folding_rules if r["beats_baseline"]), None)
        lines.append(f"{len(fo)} trial(s) **folded** past the objective's limit ({d.space.objective.folding_limit_pct:g} %) "
                     f"whenever they registered, so their best-scoring epoch is an unmoved one"
                     + (f"; best explained by **{rule['param']}**: {_rule(rule)}" if rule else
                        "; no single parameter sets them apart better than the majority-class baseline") + ".")
    rising = [t for t in d.trials if t.cls == "converged" and _improving(t)]
    if rising:
        lines.append(f"{len(rising)} converged trial(s) were still improving at their last epoch: the search budget is "
                     f"short for them; promotion (--promote) trains the best to a full budget.")
    if d.importance_objective:
        top = next(iter(d.importance_objective))
        lines.append(f"For the objective, **{top}** matters most ({d.importance_objective[top]:.2f}, fANOVA).")
    best = next(iter(_ranked([t for t in d.trials if t.cls not in DIVERGED and t.metrics.get("best_score") is not None])), None)
    if best is not None:
        lines.append(f"Best trial {best.trial_id} ({best.cls}): Dice {best.metrics.get('best_val_dice', math.nan):.3f} vs "
                     f"{d.noreg_dice:.3f} without registration, folding {best.metrics.get('best_val_folding_pct', math.nan):.3f}% "
                     f"with {_fmt_params(best.params)}.")
    m = d.model
    if m:
        src = f" (promoted from search trial {m['promoted_from']})" if m.get("promoted_from") else ""
        t = m.get("test", {})
        held = (f": held-out test Dice {t['dice']:.3f}, HD95 {t.get('hd95', math.nan):.2f}, SDlogJ "
                f"{t.get('sdlogj', math.nan):.3f}, folding {t.get('folding_pct', math.nan):.3f}% on "
                f"{int(t.get('pairs', 0))} pairs of reserved subjects" if "dice" in t else ": no held-out scores recorded")
        lines.append(f"The study's model is trial {m['trial_id']}{src}{held}.")
    lines.append(f"Importances: {d.importance_source}.")
    return lines


def _improving(t) -> bool:
    from .trials import still_improving

    return still_improving(t)


def write_report(d: Diagnosis, client, out_dir: Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = [plot_curves(d, out / "curves_by_class.png"), plot_parallel(d, out / "parallel_coordinates.png"),
            plot_scatter(d, out / "dice_vs_params.png")]
    # Optuna's own plots of the persisted study where they fit (importances, slice, history); regtune's
    # class-coloured plots above where Optuna's cannot colour by class
    figs += optuna_plots(d, out) or [plot_importances(d, out / "importances.png")]
    figs += amortised_figures(d.trials, client, out)  # amortised trials: their curves against the loss weight
    overlays = []
    best = next(iter(_ranked([t for t in d.trials if t.cls not in DIVERGED])), None)
    div = next((t for t in d.trials if t.cls in DIVERGED and t.cls == "collapsed"), None) or \
        next((t for t in d.trials if t.cls in DIVERGED), None)
    for label, t in (("best", best), ("diverged", div)):
        if t is None:
            continue
        for art in ("figures/overlay.png", "figures/diverged_overlay.png", "figures/jacobian.png"):
            try:
                p = Path(client.download_artifacts(t.run_id, art, str(out)))
            except Exception:
                continue
            dest = out / f"{label}_{t.trial_id}_{Path(art).name}"
            p.replace(dest)
            overlays.append((label, t, dest))
    (out / "next_space.yaml").write_text(
        f"# written by regtune diagnose from study '{d.space.name}'\n" + yaml.safe_dump(d.next_space, sort_keys=False))
    findings = explain(d)
    md = [f"# Diagnosis of study `{d.space.name}`", "", *[f"- {x}" for x in findings], "",
          "## Trials", "", "| trial | class | status | best Dice | best fold % | epochs | params | reason |",
          "|---|---|---|---|---|---|---|---|"]
    for t in _ranked(d.trials):
        md.append(f"| {t.trial_id} | {t.cls} | {t.status} | {t.metrics.get('best_val_dice', math.nan):.3f} | "
                  f"{t.metrics.get('best_val_folding_pct', math.nan):.3f} | {len(t.history.get('val_dice', []))} | "
                  f"{_fmt_params(t.params)} | {(d.no_motion_why.get(t.trial_id) or t.reason)[:120]} |")
    md += ["", "## Which parameters separate diverged from the other trials", "",
           "| parameter | rule | right side | majority baseline | beats it | detail |", "|---|---|---|---|---|---|"]
    md += [f"| {s['param']} | `{s['rule']}` | {s['correct']}/{s['n']} | {s['baseline']}/{s['n']} | "
           f"{'yes' if s['beats_baseline'] else 'no'} | {s['detail']} |" for s in d.separators] or ["| — | no trial diverged | | | | |"]
    if d.no_motion_rules:
        md += ["", "## Which parameters separate the no-motion trials from the others", "",
               "| parameter | rule | right side | majority baseline | beats it |", "|---|---|---|---|---|"]
        md += [f"| {s['param']} | `{s['rule']}` | {s['correct']}/{s['n']} | {s['baseline']}/{s['n']} | "
               f"{'yes' if s['beats_baseline'] else 'no'} |" for s in d.no_motion_rules]
    md += ["", f"Parameter importance: {d.importance_source}.", "",
           "| parameter | objective | divergence |", "|---|---|---|"]
    for p in d.space.params:
        md.append(f"| {p.key} | {d.importance_objective.get(p.key, math.nan):.3f} | {d.importance_divergence.get(p.key, math.nan):.3f} |")
    md += ["", "## Safe ranges (trials that did not diverge)", ""]
    md += [f"- `{k}`: {v}" for k, v in d.safe_ranges.items()]
    md += ["", "## Recommended next space", "", "Written to `next_space.yaml`:", "", "```yaml",
           yaml.safe_dump(d.next_space, sort_keys=False).rstrip(), "```", "", "## Figures", ""]
    md += [f"![{f.stem}]({f.name})" for f in figs]
    md += [f"![{label} trial {t.trial_id}]({p.name})" for label, t, p in overlays]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(_html(d, findings, md, figs, overlays))
    (out / "diagnosis.json").write_text(json.dumps({
        "study": d.space.name, "noreg_dice": d.noreg_dice, "counts": d.counts(),
        "trials": [{"trial_id": t.trial_id, "class": t.cls, "status": t.status, "params": t.params,
                    "best_val_dice": t.metrics.get("best_val_dice")} for t in d.trials],
        "importance_objective": d.importance_objective, "importance_divergence": d.importance_divergence,
        "separators": d.separators, "no_motion_rules": d.no_motion_rules, "folding_rules": d.folding_rules, "importance_source": d.importance_source,
        "safe_ranges": d.safe_ranges}, indent=1, default=str))
    return out / "report.html"


def _html(d: Diagnosis, findings: list[str], md: list[str], figs: list[Path], overlays) -> str:
    def md_inline(s: str) -> str:
        s = html.escape(s)
        import re

        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    rows = []
    for t in _ranked(d.trials):
        rows.append(f"<tr><td>{t.trial_id}</td><td><span style='color:{COLOURS.get(t.cls, '#777')}'>&#9679;</span> {t.cls}</td>"
                    f"<td>{t.metrics.get('best_val_dice', math.nan):.3f}</td><td>{t.metrics.get('best_val_folding_pct', math.nan):.3f}</td>"
                    f"<td>{html.escape(_fmt_params(t.params))}</td><td>{html.escape(t.reason[:80])}</td></tr>")
    seps = "".join(f"<tr><td>{s['param']}</td><td><code>{html.escape(s['rule'])}</code></td><td>{s['correct']}/{s['n']}</td>"
                   f"<td>{s['baseline']}/{s['n']}</td><td>{html.escape(s['detail'])}</td></tr>" for s in d.separators)
    imgs = "".join(f"<figure><img src='{f.name}'><figcaption>{f.stem.replace('_', ' ')}</figcaption></figure>" for f in figs)
    ovs = "".join(f"<figure><img src='{p.name}' style='max-width:48%'><figcaption>{label} trial {t.trial_id} ({t.cls}): "
                  f"{html.escape(_fmt_params(t.params))}</figcaption></figure>" for label, t, p in overlays)
    nxt = html.escape(yaml.safe_dump(d.next_space, sort_keys=False))
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>regtune diagnosis: {d.space.name}</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:24px auto;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px}} img{{max-width:100%}} code{{background:#f3f3f3}} li{{margin:4px 0}}</style></head>
<body><h1>Diagnosis of study <code>{d.space.name}</code></h1><ul>{''.join(f'<li>{md_inline(x)}</li>' for x in findings)}</ul>
<h2>Which parameters separate diverged from the other trials</h2><table><tr><th>parameter</th><th>rule</th><th>right side</th><th>majority baseline</th><th>detail</th></tr>{seps}</table>
<h2>Figures</h2>{imgs}<h2>Best and diverged trial</h2>{ovs or '<p>no figures available</p>'}
<h2>Trials</h2><table><tr><th>trial</th><th>class</th><th>best Dice</th><th>fold %</th><th>params</th><th>reason</th></tr>{''.join(rows)}</table>
<h2>Recommended next space (next_space.yaml)</h2><pre>{nxt}</pre></body></html>"""
