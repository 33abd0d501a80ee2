"""The report page: one jinja2 template, autoescaped, with its figures inlined as data: URIs.

Autoescaping means every string that reaches the page (a class name, a run's directory name, a
config value, an audit's evidence) is HTML-escaped; nothing in this template is marked safe.
The Content-Security-Policy forbids scripts and any load that is not an inline image, so the
page makes no network request even if a string were to slip through.
"""

from __future__ import annotations

from typing import Any

import jinja2

from toughen.console import reveal

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #f6f6f4; }
main { max-width: 1180px; margin: 0 auto; padding: 12px 18px 40px; }
h1 { font-size: 22px; margin: 10px 0 2px; }
h2 { font-size: 17px; margin: 0 0 8px; }
h3 { font-size: 14px; margin: 10px 0 4px; }
.sub, .note { color: #666; font-size: 12.5px; }
section { background: #fff; border: 1px solid #e2e2de; border-radius: 6px; padding: 12px 16px; margin: 14px 0; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f0f0ec; font-weight: 600; }
table.compact { width: auto; min-width: 40%; }
table.compact td.num, table.compact th.num { min-width: 110px; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.small { font-size: 11.5px; color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 540px), 1fr)); gap: 10px 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { border: 1px solid #ddd; border-radius: 5px; padding: 6px; font-size: 11.5px; width: 208px; background: #fcfcfb; }
.tiles { display: flex; gap: 4px; }
.tiles figure { margin: 0; text-align: center; font-size: 10.5px; color: #666; }
.tiles img { width: 64px; height: 64px; image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.ok { color: #00734d; } .bad { color: #b3261e; font-weight: 600; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; background: #eee; white-space: nowrap; }
td.word { overflow-wrap: break-word; min-width: 12em; }
.status-pass, .verdict-pass { background: #d9f2e4; color: #00734d; }
.status-fail, .verdict-fail, .status-suspicious, .verdict-suspicious { background: #fbe0de; color: #b3261e; }
.status-warn, .verdict-warn, .status-skipped { background: #fff1cc; color: #7a5900; }
ul.events { margin: 2px 0 0; padding-left: 18px; font-size: 12.5px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<div class="sub">{{ subtitle }}</div>

<section id="summary">
<h2>Summary</h2>
<table>
<thead><tr><th>Run</th><th>Recipe</th><th>Data · model</th><th>Threat model</th><th class="num">Epochs</th>
<th class="num">Clean</th><th>Robust (worst attack at the training ε)</th><th class="num">Train time</th>{% if audits %}<th>Audit</th>{% endif %}{% if show_cost %}<th class="num">Cost</th>{% endif %}</tr></thead>
<tbody>
{% for r in summary_rows %}
<tr>
<td>{{ r.name }}{% if not r.finished %} <span class="bad">(unfinished)</span>{% endif %}</td>
<td>{{ r.recipe }}{% for k, v in r.params %}<br><span class="small">{{ k }} = {{ v }}</span>{% endfor %}</td>
<td>{{ r.data }}<br><span class="small">{{ r.model }}</span></td>
<td>{{ r.threat }}</td>
<td class="num">{{ r.epochs }}{% if r.best_epoch %}<br><span class="small">best {{ r.best_epoch }}</span>{% endif %}</td>
<td class="num">{{ r.clean }}</td>
<td>{% if r.robust %}<b>{{ r.robust }}</b> <span class="small">{{ r.robust_attack }}</span>{% else %}<span class="small">not measured</span>{% endif %}
{% for other in r.others %}<br><span class="small">{{ other }}</span>{% endfor %}</td>
<td class="num">{{ r.train_time }}</td>
{% if audits %}<td>{% if r.verdict %}<span class="verdict verdict-{{ r.verdict_class }}">{{ r.verdict }}</span>{% else %}<span class="small">—</span>{% endif %}</td>{% endif %}
{% if show_cost %}<td class="num">{{ r.cost }}</td>{% endif %}
</tr>
{% endfor %}
</tbody>
</table>
<p class="note">Robust accuracy is the lowest measured at the run's training ε (a suite's worst case per example where
a suite was run); the attack and the number of test examples are named next to it. Clean accuracy is from the same measurement.
{% if any_missing_robust %}Runs without a robust number: run <code>toughen eval RUN_DIR</code> and report again.{% endif %}</p>
</section>


{% if tradeoff %}
<section id="tradeoff">
<h2>Trade-off: clean against robust accuracy</h2>
<img id="tradeoff-plot" src="{{ tradeoff }}" alt="clean against robust accuracy, one point per run">
<p class="note">One point per run, labelled by recipe, its parameter and ε. Points on the dashed Pareto front (outlined)
are not beaten on both axes by any other run at the same threat model.</p>
</section>
{% endif %}

{% if robustness %}
<section id="robustness">
<h2>Robust accuracy over ε</h2>
<img src="{{ robustness }}" alt="robust accuracy against the threat-model radius">
</section>
{% elif robustness_hint %}
<section id="robustness">
<h2>Robust accuracy over ε</h2>
<p class="note">No run was evaluated at two or more ε. To draw the curve: <code>toughen eval RUN_DIR --eps 0.1</code>,
then again at other ε.</p>
</section>
{% endif %}

{% if brackets %}
<section id="certified">
<h2>Certified against attacked</h2>
<img src="{{ brackets }}" alt="per run, certified accuracy against attacked robust accuracy">
<p class="note">A certificate proves an example robust (a lower bound on robust accuracy); an attack that fails proves
nothing, but one that succeeds proves the example not robust (an upper bound). The true robust accuracy lies in the
hatched range: {% for b in bracket_rows %}{{ b.label }}: {{ b.text }}{% if not loop.last %}; {% endif %}{% endfor %}.
A wide range means the bound is loose for that model, not that the model is weak: models not trained for
certification (ibp, crown_ibp) are rarely certified.</p>
</section>
{% endif %}

{% if radius_curves %}
<section id="smoothing">
<h2>Randomized smoothing: certified accuracy over the L2 radius</h2>
<img src="{{ radius_curves }}" alt="certified accuracy against L2 radius">
<p class="note">Certifies the Gaussian-smoothed classifier (Cohen et al. 2019), each certificate holding with probability
1 - alpha; an example counts at a radius if it is predicted right with at least that certified radius.</p>
</section>
{% endif %}

{% if robust_radii %}
<section id="radius">
<h2>Robust radius per example</h2>
{% for r in robust_radii %}
<h3>{{ r.name }} <span class="small">{{ r.label }}; {{ r.attack }}, n={{ r.n }}; median radius {{ r.median }} ({{ r.norm }})</span></h3>
<img src="{{ r.img }}" alt="histogram of robust radii and the robustness curve of {{ r.name }}">
{% endfor %}
<p class="note">Per example, the smallest adversarial perturbation the search found (<code>toughen eval RUN_DIR --radius</code>):
an upper bound on the example's true robust radius, since an attack can miss a closer point. Robust accuracy at ε is the
fraction of examples whose radius exceeds ε, so one search gives the whole curve; like any attack's it is an upper
bound on the true robust accuracy. Markers: the run's per-ε attack measurements in the same norm.</p>
</section>
{% endif %}

{% if curves %}
<section id="training">
<h2>Training curves</h2>
<div class="grid">
{% for c in curves %}
<div>
<h3>{{ c.name }} <span class="small">{{ c.label }}</span></h3>
<img src="{{ c.img }}" alt="training curves of {{ c.name }}">
{% if c.events %}<ul class="events">{% for epoch, text in c.events %}<li>epoch {{ epoch }}: guard: {{ text }}</li>{% endfor %}</ul>{% endif %}
</div>
{% endfor %}
</div>
<p class="note">Dashed: on training batches (the attack at the training step's ε); solid: on the validation split.
A red dotted line marks an epoch where the guard intervened, a green line the epoch selected as best.</p>
</section>
{% endif %}

{% if per_class %}
<section id="per-class">
<h2>Per-class robust accuracy</h2>
<table class="compact">
<thead><tr><th>Class</th>{% for h in per_class.headers %}<th class="num">{{ h.name }}<br><span class="small">{{ h.attack }}</span></th>{% endfor %}</tr></thead>
<tbody>
{% for row in per_class.rows %}<tr><td>{{ row.name }}</td>{% for cell in row.cells %}<td class="num" style="background: {{ cell.color }}">{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
</section>
{% endif %}

{% if detectors %}
<section id="detectors">
<h2>Text detectors</h2>
<p class="note">A detector runs at a threshold chosen from a false-positive budget on the validation split, not at argmax.
Detection: the share of positive test texts flagged at that threshold; evasion: of those flagged, the share the attack pushes below it.
Per family: clean / robust accuracy of each family's test texts (for an injection family, clean accuracy is its detection rate at argmax).</p>
<table class="compact">
<thead><tr><th>Run</th><th>Attack</th><th class="num">FP budget</th><th class="num">Test FPR</th><th class="num">ROC AUC</th><th class="num">Detection</th><th class="num">Evasion at threshold</th><th>Per family (clean / robust)</th></tr></thead>
<tbody>
{% for d in detectors %}<tr><td>{{ d.name }}</td><td>{{ d.attack }}{% if d.budget is not none %} ({{ d.budget }}){% endif %}</td>
{% if d.has_op %}<td class="num">{{ d.fpr }}</td><td class="num">{{ d.test_fpr }}</td><td class="num">{{ d.auc }}</td><td class="num">{{ d.detection }}</td><td class="num">{{ d.evasion }} of {{ d.n_detected }}</td>{% else %}<td colspan="5" class="small">no operating point recorded</td>{% endif %}
<td class="small">{% for f in d.families %}{{ f.name }}: {{ f.clean }} / {{ f.robust }} (n={{ f.n }}){% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>
{% endfor %}
</tbody>
</table>
</section>
{% endif %}

{% if galleries %}
<section id="gallery">
<h2>Adversarial examples</h2>
<p class="note">The first test input of each class (then the second of each, ...), chosen before the attack, attacked with PGD at the run's ε. Middle tile: the perturbation,
stretched so that the largest |δ| shown reaches the ends of the colour scale (red +, blue −).</p>
{% for g in galleries %}
<h3>{{ g.name }} <span class="small">{{ g.label }}</span></h3>
{% if g.ok %}
<div class="small">{{ g.attack }} at ε = {{ g.eps }} ({{ g.norm }}); perturbation scale ±{{ g.scale }}; {{ g.n_fooled }} of {{ g.n_clean_right }} correctly classified inputs fooled</div>
<div class="cards">
{% for ex in g.examples %}
<div class="card">
<div class="tiles">
<figure><img src="{{ ex.clean }}" alt="clean input"><figcaption>clean</figcaption></figure>
<figure><img src="{{ ex.delta }}" alt="perturbation"><figcaption>perturbation</figcaption></figure>
<figure><img src="{{ ex.adv }}" alt="adversarial input"><figcaption>adversarial</figcaption></figure>
</div>
<div>true <b>{{ ex.true }}</b></div>
<div>clean → <span class="{{ 'ok' if ex.clean_right else 'bad' }}">{{ ex.clean_pred }}</span> ({{ ex.clean_conf }})</div>
<div>adversarial → <span class="{{ 'ok' if ex.adv_right else 'bad' }}">{{ ex.adv_pred }}</span> ({{ ex.adv_conf }})</div>
</div>
{% endfor %}
</div>
{% else %}
<p class="note">No gallery: {{ g.reason }}.</p>
{% endif %}
{% endfor %}
</section>
{% endif %}

{% if text_examples %}
<section id="text-examples">
<h2>Adversarial texts</h2>
<p class="note">Test texts as the run's own evaluation attacked them (successful evasions first). Invisible characters are shown as \u escapes.</p>
{% for t in text_examples %}
<h3>{{ t.name }} <span class="small">{{ t.label }}; {{ t.attack }}</span></h3>
<table>
<thead><tr><th>original</th><th>adversarial</th><th>label</th><th>now</th><th class="num">edits</th></tr></thead>
<tbody>
{% for ex in t.examples %}<tr><td class="small">{{ ex.original }}</td><td class="small">{{ ex.adversarial | visible }}</td><td>{{ ex.label }}</td><td><span class="{{ 'bad' if ex.success else 'ok' }}">{{ ex.now }}</span></td><td class="num">{{ ex.edits }}</td></tr>
{% endfor %}</tbody>
</table>
{% endfor %}
</section>
{% endif %}

{% if attack_warnings %}
<section id="warnings">
<h2>Indicators of attack failure</h2>
<p class="note">Warnings raised while the runs were evaluated: each says an attack may have failed (Pintor et al. 2022,
"Indicators of Attack Failure"), with its evidence, and the robust accuracy measured with it may be too high.
docs/evaluation.md says what to do about each.</p>
{% for r in attack_warnings %}
<h3>{{ r.name }}</h3>
<table>
<thead><tr><th>Evaluation</th><th>Indicator</th><th>Attack</th><th>Evidence</th></tr></thead>
<tbody>
{% for e in r.evaluations %}{% for w in e.warnings %}<tr><td class="small">{{ e.evaluation }}</td><td class="word">{{ w.indicator }}</td><td class="word">{{ w.attack }}</td><td class="small">{{ w.evidence }}</td></tr>
{% endfor %}{% endfor %}
</tbody>
</table>
{% endfor %}
</section>
{% endif %}

{% if audits %}
<section id="audit">
<h2>Audit</h2>
{% for a in audits %}
<h3>{{ a.name }}: <span class="verdict verdict-{{ a.verdict_class }}">{{ a.verdict }}</span></h3>
<table>
<thead><tr><th>Check</th><th>Status</th><th>Evidence</th></tr></thead>
<tbody>
{% for c in a.checks %}<tr><td class="word">{{ c.name }}</td><td><span class="verdict status-{{ c.status_class }}">{{ c.status }}</span></td><td class="small">{{ c.evidence }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
</section>
{% endif %}

<p class="sub">Every number on this page was read from the run directories listed above ({{ sources }}).</p>
</main>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["visible"] = reveal  # homoglyphs and zero-width characters as \u escapes


def render(context: dict[str, Any]) -> str:
    return _ENV.from_string(TEMPLATE).render(**context)
