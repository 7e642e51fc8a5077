"""Render the project's pages from the measurements in ``bench/results/`` and from the code: ``python -m bench.report``.

Every table of numbers in ``README.md`` and ``docs/`` sits between ``<!-- bench.report: NAME -->`` and
``<!-- /bench.report -->`` and is written here, never by hand: the measurement tables from the JSON files
(each names its command, commit, date and machine), the reference tables of ``docs/model.md`` and
``docs/training.md`` from the constructor of ``UNet`` and the dataclasses of ``train/config.py`` (read as
source, so rendering imports neither torch nor the packages). The prose around the markers is written by
hand. ``python -m bench.report --check`` renders to memory and exits 1 naming each page that differs.

A JSON without a ``provenance`` block (``command``, ``commit``, ``date``) is dated by ``git log``: the commit
that last wrote the file.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import subprocess
import sys
import tokenize
from functools import cache
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = ("README.md", "docs/model.md", "docs/training.md", "docs/results.md", "docs/benchmarks.md")
MARKER = re.compile(r"(<!-- bench\.report: ([\w-]+) -->\n)(.*?)(<!-- /bench\.report -->)", re.S)


# ---------------------------------------------------------------------------- measurements
@cache
def result(name: str) -> dict:
    """``bench/results/NAME.json`` with its ``provenance``: its own block, its top-level ``command`` / ``commit`` /
    ``date``, or else ``git log`` of the file."""
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text())
    if "provenance" not in data and {"command", "commit", "date"} <= data.keys():  # as bench.common.provenance() writes it
        data["provenance"] = {key: data[key] for key in ("command", "commit", "date")}
    if "provenance" not in data:
        line = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], cwd=ROOT,
                              capture_output=True, text=True).stdout.split()
        commit, date = line if len(line) == 2 else ("uncommitted", "undated")
        data["provenance"] = {"command": f"python -m bench.{name.split('_')[0]}", "commit": commit, "date": date}
    return data


def machine(data: dict) -> str:
    """``AMD EPYC (Zen 3, AVX2, no AVX-512), 2 threads``: the CPU, its core and vector ISA, the threads of the run."""
    m = data.get("machine", {})
    detail = ", ".join(m[key] for key in ("core", "isa") if m.get(key))
    isa = f" ({detail})" if detail else ""
    device = "" if m.get("device", "cpu") == "cpu" else f", {m['device']}"
    threads = f", {m['threads']} thread{'s' * (m['threads'] != 1)}" if m.get("threads") else ""
    return f"{m.get('cpu', 'an unnamed machine')}{isa}{threads}{device}"


def measured(data: dict) -> str:
    """One line naming a measurement: date, machine, commit and the command that produced it."""
    p = data["provenance"]
    note = f" ({p['note']})" if p.get("note") else ""
    return f"Measured {p['date']} on {machine(data)}, commit `{p['commit']}`{note}:\n`{p['command']}`"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; ``None`` cells print as ``-``."""
    cells = [[("-" if c is None else str(c)).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def f4(x: float | None) -> str | None:
    return None if x is None else f"{x:.4f}"


def f3(x: float | None) -> str | None:
    return None if x is None else f"{x:.3f}"


def minutes(m: float) -> str:
    return f"{int(m)} min {round((m - int(m)) * 60):02d} s"


# ---------------------------------------------------------------------------- source comments
@cache
def _comments(path: Path) -> dict[int, str]:
    """The trailing ``# comment`` of each line of a Python file, by line number."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


@cache
def _aliases(package: Path) -> dict[str, str]:
    """``Name = Literal[...]`` type aliases defined at the top of the package's modules, as source text."""
    found = {}
    for path in sorted(package.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                text = ast.unparse(node.value)
                if text.startswith("Literal["):
                    found[node.targets[0].id] = text
    return found


def _type_text(annotation: ast.expr, aliases: dict[str, str]) -> str:
    """An annotation as written, its ``Literal`` aliases spelt out as the choices."""
    text = ast.unparse(annotation)
    for name, literal in aliases.items():
        text = re.sub(rf"\b{name}\b", literal, text)
    text = re.sub(r"Literal\[([^\]]*)\]", lambda m: m.group(1).replace(", ", " | "), text)
    return text.replace("'", '"')


def unet_fields() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, meaning)`` of every ``UNet.__init__`` parameter, from the constructor's line comments."""
    path = ROOT / "unet_diffusion" / "unet.py"
    unet = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef) and n.name == "UNet")
    init = next(n for n in unet.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[1:]
    defaults = [None] * (len(args) - len(init.args.defaults)) + init.args.defaults
    aliases, comments = _aliases(path.parent), _comments(path)
    return [(a.arg, _type_text(a.annotation, aliases), _default_text(d), comments.get(a.lineno, ""))
            for a, d in zip(args, defaults)]


def config_sections() -> dict[str, list[tuple[str, str, str, str]]]:
    """The training config by section (``model``, ``data``, ``data.augment``, ...): ``(key, type, default, meaning)``."""
    path = ROOT / "train" / "config.py"
    classes = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
    aliases, comments = {**_aliases(path.parent), **_aliases(ROOT / "unet_diffusion")}, _comments(path)
    sections: dict[str, list] = {}

    def walk(cls: ast.ClassDef, prefix: str) -> None:
        rows = sections.setdefault(prefix or "(top level)", [])
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            kind = ast.unparse(node.annotation)
            key = f"{prefix}.{node.target.id}" if prefix else node.target.id
            if kind in classes:
                walk(classes[kind], key)
                continue
            rows.append((key, _type_text(node.annotation, aliases), _default_text(node.value), comments.get(node.lineno, "")))

    walk(classes["Config"], "")
    return {name: rows for name, rows in sections.items() if rows}


def _default_text(value: ast.expr | None) -> str:
    """A dataclass default as the YAML user sees it: ``field(default_factory=dict)`` is ``{}``."""
    if value is None:
        return ""
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
        factory = next(k.value for k in value.keywords if k.arg == "default_factory")
        if isinstance(factory, ast.Lambda):
            return ast.unparse(factory.body)
        return {"dict": "{}", "list": "[]"}.get(ast.unparse(factory), ast.unparse(factory))
    return ast.unparse(value).replace("'", '"')


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


# ---------------------------------------------------------------------------- reference tables
def render_model_fields() -> str:
    rows = [[f"`{name}`", _code(kind), _code(default), meaning] for name, kind, default, meaning in unet_fields()]
    return table(["field", "type", "default", "meaning"], rows)


def render_training_config() -> str:
    parts = []
    for section, rows in config_sections().items():
        parts.append(f"**`{section}`**\n\n" if section != "(top level)" else "**top level**\n\n")
        parts[-1] += table(["key", "type", "default", "meaning"],
                           [[f"`{key}`", _code(kind), _code(default), meaning] for key, kind, default, meaning in rows])
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------- the shipped configs
def config_header(name: str) -> str:
    """The first comment line of ``configs/NAME.yaml``: what the config trains."""
    first = (ROOT / "configs" / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("#").strip()


CONFIG_ORDER = ("quickstart", "mnist", "isbi2012", "isbi2012_3d", "isbi2012_latent", "mnist_gpu", "ddpm_cifar10",
                "isbi2012_paper", "shapes_crossattn")


def config_budget(name: str) -> str:
    """What the config's ``train`` section sets the run's length to: minutes, or steps."""
    train = (yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()) or {}).get("train", {})
    if train.get("budget_minutes"):
        return f"{train['budget_minutes']:g} minutes"
    return f"{train['steps']:,} steps" if "steps" in train else "-"


def config_result(name: str) -> tuple[str, str]:
    """``(budget, result)`` of a shipped config: its measured run from ``bench/results/config_NAME.json``, if any."""
    path = RESULTS / f"config_{name}.json"
    if name == "quickstart" and (RESULTS / "shapes_judge.json").is_file():
        data = result("shapes_judge")
        scores = [s for key, s in data["results"].items() if "pipeline" in key]
        if scores:
            return config_budget(name), (f"shapes drawn as asked: {scores[0]['score']:.0%} "
                                         f"({data['provenance']['date']}, {data.get('machine', {}).get('cpu', '-')})")
    if not path.is_file():
        return config_budget(name), "not measured here"
    data = result(f"config_{name}")
    run = data["training"]
    budget = f"{config_budget(name)} ({minutes(run['wall_minutes'])} wall, {run['steps']:,} steps)"
    if not data["scores"]:
        return budget, f"quality not measured ({data['provenance']['date']})"
    best = data["scores"][0]
    if "agreement" in best:
        text = (f"confident {best['confident']:.3f}, agreement {best['agreement']:.3f}, distance {best['fd_ratio']:.2f}x "
                f"the real digits'")
    else:
        instances = f" ({best['rand_error_instances']:.4f} with `--instances 1`)" if best["rand_error_instances"] else ""
        text = (f"pixel error {best['pixel_error']:.4f}, Rand error {best['rand_error']:.4f}{instances}, "
                f"membrane Dice {best['membrane_dice']:.4f}")
    return budget, f"{text} ({data['provenance']['date']}, {data['machine']['cpu']})"


def render_configs() -> str:
    rows = []
    for name in CONFIG_ORDER:
        budget, outcome = config_result(name)
        rows.append([f"[`{name}`](configs/{name}.yaml)", config_header(name), budget, outcome])
    return table(["config", "what it trains", "budget", "measured result ([details](docs/results.md))"], rows)


def render_mnist() -> str:
    data = result("config_mnist")
    run, real = data["training"], data["real_digits"]
    rows = [[s["model"], f"{s['steps']:,}", f"{s['sampler'].upper()} {s['sample_steps']}", s["guidance"] or "none",
             f3(s["confident"]), f3(s["agreement"]), f"{s['fd_ratio']:.2f}x"] for s in data["scores"]]
    rows.append(["real held-out digits", "-", "-", "-", f3(real["confident"]), f3(real["agreement"]),
                 f"1.00x (distance {real['fd']:.2f})"])
    t = data["targets"]
    return "\n\n".join([
        measured(data),
        f"Training: {minutes(run['wall_minutes'])} wall for a {run['budget_minutes']}-minute budget, {run['steps']:,} steps of "
        f"batch {run['batch_size']} ({run['seconds_per_step']} s a step), final validation loss {run['val_loss']}. "
        f"Scored by `{data['score_command']}` ({data['samples']} samples, the same number of each digit):",
        table(["model", "steps", "sampler", "guidance", "confident (p > 0.9)", "agreement with the asked digit",
               "Fréchet distance / real"], rows),
        f"Targets: confident share within {t['confident_within']} of the real digits', agreement >= {t['agreement_min']}, "
        f"distance <= {t['fd_ratio_max']}x."])


def _seg_rows(data: dict) -> list[list]:
    return [[s["model"], f"{s['steps']:,}", s["tta"] or "none", f4(s["pixel_error"]), f4(s["rand_error"]),
             f4(s["rand_error_instances"]), f4(s["membrane_dice"])] for s in data["scores"]]


SEG_HEADER = ["model", "steps", "TTA", "pixel error", "Rand error", "Rand error, `--instances 1`", "membrane Dice"]


def render_isbi2012() -> str:
    data = result("config_isbi2012")
    run, paper, t = data["training"], data["paper"], data["targets"]
    rows = _seg_rows(data) + [[f"paper ({paper['note']})", "-", "-", f4(paper["pixel_error"]), f4(paper["rand_error"]),
                               None, None]]
    return "\n\n".join([
        measured(data),
        f"Training: {minutes(run['wall_minutes'])} wall for a {run['budget_minutes']}-minute budget, {run['steps']:,} steps of "
        f"{run['batch_size']} crops of {run['crop']}x{run['crop']} ({run['seconds_per_step']} s a step); the run's own "
        f"validation at its midpoint: pixel error {run['midpoint_pixel_error']}. Scored on {data['held_out']} by "
        f"`{data['score_command']}`:",
        table(SEG_HEADER, rows),
        f"Targets: pixel error <= {t['pixel_error_max']}, Rand error <= {t['rand_error_max']}, "
        f"membrane Dice >= {t['membrane_dice_min']}."])


def render_isbi2012_3d() -> str:
    data = result("config_isbi2012_3d")
    run = data["training"]
    return "\n\n".join([
        measured(data),
        f"Training: {minutes(run['wall_minutes'])} wall, {run['steps']:,} steps of {run['batch_size']} crops of {run['crop']} "
        f"voxels ({run['seconds_per_step']} s a step), {run['peak_rss_gb']} GB peak memory. Scored on {data['held_out']} "
        f"by `{data['score_command']}`:",
        table(SEG_HEADER, _seg_rows(data))])


def render_isbi2012_latent() -> str:
    data = result("config_isbi2012_latent")
    run = data["training"]
    return "\n\n".join([
        measured(data),
        f"{minutes(run['wall_minutes'])} wall in all: encoding the latent cache {run['cache_seconds']} s, then "
        f"{run['steps']:,} steps of batch {run['batch_size']} ({run['seconds_per_step']} s a step), "
        f"{run['peak_rss_gb']} GB peak memory. Quality: not measured."])


def render_recipe_ideas(names: list[str]) -> str:
    """nnU-Net's recipe ideas against the shipped ISBI recipe at equal wall time, one block per seed."""
    blocks = []
    for name in names:
        data = result(name)
        overrides = data["provenance"]["training_overrides"]
        rows = []
        for r in data["results"]:
            label = Path(r["pipeline"]).parent.name  # runs/LABEL/pipeline
            rows.append([f"{label} ({overrides[label] or 'configs/isbi2012.yaml'})", f4(r["mean"]["pixel_error"]),
                         f4(r["mean"]["rand_error"]), f4(r["mean"]["rand_error_watershed"]), f4(r["mean"]["membrane_dice"])])
        blocks += [measured(data), table(["recipe", "pixel error", "Rand error", "Rand error (watershed)", "membrane Dice"], rows)]
    return "\n\n".join(blocks)


def render_trials(config: str) -> str:
    """The recipe changes tried on a shipped config and not adopted, each with the commit that recorded it."""
    data = result("recipe_trials")
    trials = data["trials"][config]
    names = {"confident": "confident", "agreement": "agreement", "fd_ratio": "distance / real", "pixel_error": "pixel error",
             "rand_error": "Rand error", "rand_error_instances": "Rand error, `--instances 1`", "membrane_dice": "membrane Dice"}
    keys = list(trials[0]["scores"])
    guided = "guidance" in trials[0]
    rows = [[t["change"], f"{t['steps']:,}" if t["steps"] else None, *([t["guidance"] or "none"] if guided else []),
             *(None if t["scores"][k] is None else f"{t['scores'][k]:.2f}x" if k == "fd_ratio" else
               f"{t['scores'][k]:.{3 if config == 'mnist' else 4}f}" for k in keys), f"{t['date']}, `{t['commit']}`"]
            for t in trials]
    header = ["change", "steps", *(["guidance"] if guided else []), *(names[k] for k in keys), "recorded"]
    return "\n\n".join([f"On {machine(data)}; {data['provenance']['note']}:", table(header, rows)])


def render_init_effect() -> str:
    data = result("init_effect")

    def spread(values: list[float]) -> str:
        return f"{sum(values) / len(values):.4f} ({min(values):.4f}-{max(values):.4f})"

    rows = [[*key.split("/"), spread(r["first"]), spread(r["last"])] for key, r in data["results"].items()]
    overrides = "; ".join(f"{name}: `{' '.join(o)}`" for name, o in data["overrides"].items())
    return "\n\n".join([
        measured(data),
        f"{data['steps']} steps, {data['seeds']} seeds, mean (min-max); overrides {overrides}:",
        table(["config", "weight_init", "loss, first 20% of steps", "loss, last 20%"], rows)])


# ---------------------------------------------------------------------------- the benchmarks
def _rows(data: dict, columns: list[str]) -> list[list]:
    return [[row.get(c) for c in columns] for row in data["rows"]]


def render_speed(name: str = "speed_cpu_fp32") -> str:
    data = result(name)
    columns = ["config", "batch", "variant", "mode", "ours img/s", "diffusers img/s", "speed ratio"]
    if any("ours MB" in row for row in data["rows"]):
        columns += ["ours MB", "diffusers MB", "mem ratio"]
    columns += ["ours MFU", "diffusers MFU"]
    return "\n\n".join([measured(data), table(columns, _rows(data, columns))])


def render_speed_volumes() -> str:
    data = result("speed_cpu_volumes")
    columns = ["config", "batch", "variant", "mode", "ours s/step", "monai s/step", "speed ratio", "ours MB", "monai MB",
               "mem ratio", "ours MFU", "monai MFU"]
    return "\n\n".join([measured(data), table(columns, _rows(data, columns))])


def render_memory() -> str:
    data = result("memory")
    columns = ["config", "batch", "checkpointing", "ours MB", "diffusers MB", "ratio", "ours RSS MB", "diffusers RSS MB",
               "RSS ratio"]
    return "\n\n".join([measured(data), table(columns, _rows(data, columns))])


def render_sampling() -> str:
    data = result("sampling")
    rows = []
    for r in data["results"]:
        for who in ("ours", "diffusers"):
            t = r["timings"][who]
            rows.append([r["model"], who, r["batch"], r["steps"], f"{r['images_per_second'][who]:.2f}",
                         f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f})",
                         f"{r['ratio']:.2f}x" if who == "ours" else "", f"{r['max_abs_image_difference']:.1e}" if who == "ours" else ""])
    return "\n\n".join([measured(data), f"Median (min-max) of {data['repeats']} interleaved calls:",
                        table(["model", "pipeline", "batch", "steps", "images/s", "s a call", "ratio", "max diff (float64)"], rows)])


def render_quality_seg() -> str:
    data = result("quality_seg")
    rows = []
    for method in data["results"]:
        for p in method["points"]:
            m = p["mean"]
            rows.append([f"{method['label']} ({p['point']})", f"{method['parameters'] / 1e6:.2f}M", f"{p['minutes']:.2f}",
                         f"{p['steps']} of {p['planned_steps']} planned", f4(m["pixel_error"]), f4(m["rand_error"]),
                         f4(m.get("rand_error_watershed")), f4(m["membrane_dice"])])
    paper = data["paper"]
    rows.append(["paper (challenge test set, full training, rotation averaging)", "-", "-", "-", f4(paper["pixel_error"]),
                 f4(paper["rand_error"]), None, None])
    return "\n\n".join([measured(data), f"{data['minutes']:g} minutes per method:",
                        table(["method", "params", "minutes", "steps", "pixel error", "Rand error", "Rand error (watershed)",
                               "membrane Dice"], rows)])


def render_quality_gen() -> str:
    data = result("quality_gen")
    rows = []
    for name, method in data["methods"].items():
        for p in method["points"]:
            rows.append([name, p["at"], f"{method['params'] / 1e6:.2f}M", f"{p['minutes']:.2f}", p["steps"], p["images_seen"],
                         f3(p["confident"]), f3(p["agreement"]), f"{p['fd']:.2f}", f"{p['fd_ratio']:.2f}"])
    real = data["real_digits"]
    rows.append([f"real digits ({data['samples']})", "-", "-", "-", "-", "-", f3(real["confident"]), f3(real["agreement"]),
                 f"{real['fd']:.2f}", "1.00"])
    return "\n\n".join([
        measured(data),
        f"{data['minutes']:g} minutes per method, {data['samples']} samples of {data['sample_steps']} "
        f"{data.get('sampler', 'ddim').upper()} steps at guidance {data['guidance']}:",
        table(["method", "at", "params", "minutes", "steps", "images seen", "confident", "agreement", "FD", "FD / real"], rows)])


def render_shapes_judge() -> str:
    if not (RESULTS / "shapes_judge.json").is_file():
        return "Not measured yet: `python -m bench.shapes_judge runs/demo/pipeline` writes `bench/results/shapes_judge.json`."
    data = result("shapes_judge")
    kinds = list(next(iter(data["results"].values()))["per_kind"])
    rows = [[name, *(f"{s['per_kind'][k]['right']:.0%}" for k in kinds), f"{s['score']:.0%}", f"{s['mean_iou']:.2f}"]
            for name, s in data["results"].items()]
    return "\n\n".join([measured(data), table(["images", *(f"{k}: right" for k in kinds), "all: right", "mean IoU"], rows)])


def render_headline() -> str:
    """One row per benchmark: ours against the best-known peer, with the machine and date."""
    speed, memory, sampling = result("speed_cpu_fp32"), result("memory"), result("sampling")
    seg, gen = result("quality_seg"), result("quality_gen")
    train = next(r for r in speed["rows"] if r["mode"] == "train" and r["config"] == "ddpm-cifar10")
    mem = next(r for r in memory["rows"] if r["checkpointing"] == "off" and r["config"] == "ddpm-cifar10")
    ddim = sampling["results"][0]
    seg_end = {m["method"]: next(p for p in m["points"] if p["point"] == "end")["mean"] for m in seg["results"]}
    gen_end = {name: next(p for p in m["points"] if p["at"] == "end") for name, m in gen["methods"].items()}

    def when(data: dict) -> str:
        return f"{data['provenance']['date']}, {machine(data)}"

    rows = [
        ["training step, `ddpm-cifar10`, fp32, batch 8 (images/s)", train["ours img/s"], f"diffusers {train['diffusers img/s']}",
         f"{train['speed ratio']} faster", when(speed)],
        ["training memory, `ddpm-cifar10`, batch 16 (MB)", mem["ours MB"], f"diffusers {mem['diffusers MB']}",
         f"{mem['ratio']} the memory", when(memory)],
        [f"DDIM sampling, `ddpm-cifar10`, {ddim['steps']} steps (s an image)", f"{ddim['timings']['ours']['median']:.1f}",
         f"diffusers {ddim['timings']['diffusers']['median']:.1f}", f"{ddim['ratio']:.2f}x faster", when(sampling)],
        [f"ISBI 2012 segmentation, {seg['minutes']:g} min of training (pixel error / Dice)",
         f"{seg_end['ours']['pixel_error']:.4f} / {seg_end['ours']['membrane_dice']:.4f}",
         f"smp Unet {seg_end['smp']['pixel_error']:.4f} / {seg_end['smp']['membrane_dice']:.4f}", "lower / higher is better",
         when(seg)],
        [f"MNIST generation, {gen['minutes']:g} min of training (distance / real)", f"{gen_end['ours']['fd_ratio']:.2f}x",
         f"diffusers {gen_end['diffusers']['fd_ratio']:.2f}x, lucidrains {gen_end['lucidrains']['fd_ratio']:.2f}x",
         "lower is better", when(gen)],
    ]
    return table(["benchmark", "ours", "peer", "ours vs peer", "measured"], rows)


# ---------------------------------------------------------------------------- pages
BLOCKS: dict[str, Callable[[], str]] = {
    "configs": render_configs,
    "headline": render_headline,
    "model-fields": render_model_fields,
    "training-config": render_training_config,
    "mnist": render_mnist,
    "isbi2012": render_isbi2012,
    "isbi2012-3d": render_isbi2012_3d,
    "isbi2012-latent": render_isbi2012_latent,
    "init-effect": render_init_effect,
    "trials-mnist": lambda: render_trials("mnist"),
    "trials-isbi2012": lambda: render_trials("isbi2012"),
    "isbi2012-ideas": lambda: render_recipe_ideas(["isbi2012_recipe_ideas", "isbi2012_recipe_ideas_seed1"]),
    "speed": render_speed,
    "speed-variants": lambda: render_speed("speed_cpu_variants"),
    "speed-volumes": render_speed_volumes,
    "memory": render_memory,
    "sampling": render_sampling,
    "quality-seg": render_quality_seg,
    "quality-gen": render_quality_gen,
    "shapes-judge": render_shapes_judge,
}


def render_page(text: str, page: str = "page") -> str:
    """``text`` with every marked block rendered anew; an unknown block name is an error."""
    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise KeyError(f"{page}: no renderer for <!-- bench.report: {name} -->; known: {', '.join(BLOCKS)}")
        body = BLOCKS[name]()
        if page.startswith("docs/"):  # links written from the project root
            body = re.sub(r"\]\((?!https?:|#|\.\./)", "](../", body)
        return f"{match.group(1)}\n{body}\n\n{match.group(4)}"  # blank lines: the table is a block of its own

    return MARKER.sub(fill, text)


def render_all() -> dict[str, str]:
    """Every page as the results and the code say it should read, by path relative to the project root."""
    return {page: render_page((ROOT / page).read_text(), page) for page in PAGES if (ROOT / page).is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs from its rendering")
    args = parser.parse_args(argv)
    stale = []
    for page, text in render_all().items():
        if (ROOT / page).read_text() != text:
            stale.append(page)
            if not args.check:
                (ROOT / page).write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python -m bench.report", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'rendered'} {len(PAGES)} pages; {'stale' if args.check else 'rewritten'}: "
          f"{', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
