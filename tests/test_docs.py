"""The README and docs/ say what the results and the code say: rendered tables are current, the documented
fields are the real ones, and every link leads somewhere."""

import dataclasses
import inspect
import json
import re
import subprocess
import sys

import pytest
from readme import FENCE, ROOT, section

from bench import report

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def table_first_column(text: str) -> list[str]:
    """The code names in the first column of every Markdown table row of ``text`` (header and rule left out)."""
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)


def test_committed_pages_equal_their_rendering():
    stale = [page for page, text in report.render_all().items() if (ROOT / page).read_text() != text]
    assert not stale, f"out of date: {stale}; run python -m bench.report and commit the pages"


def test_documented_unet_fields_are_the_constructors_parameters():
    from unet_diffusion import UNet

    documented = table_first_column(section("Fields", "docs/model.md"))
    parameters = [name for name in inspect.signature(UNet.__init__).parameters if name != "self"]
    assert documented == parameters
    assert all(meaning for *_, meaning in report.unet_fields()), "a UNet field has no line comment to describe it"


def test_documented_training_keys_are_the_configs_fields():
    from train.config import Config

    def keys(cls, prefix=""):
        for field in dataclasses.fields(cls):
            key = f"{prefix}{field.name}"
            inner = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            yield from keys(type(inner), f"{key}.") if dataclasses.is_dataclass(inner) else [key]

    documented = table_first_column(section("Every field", "docs/training.md"))
    assert documented == list(keys(Config))
    assert all(meaning for rows in report.config_sections().values() for *_, meaning in rows)


def test_tables_follow_the_results(tmp_path, monkeypatch):
    """A changed measurement changes the rendered README, and its provenance is printed with it."""
    results = tmp_path / "results"
    results.mkdir()
    for path in report.RESULTS.glob("*.json"):
        (results / path.name).write_text(path.read_text())
    mnist = json.loads((results / "config_mnist.json").read_text())
    mnist["scores"][0]["agreement"] = 0.123
    mnist["provenance"]["commit"] = "abc1234"
    (results / "config_mnist.json").write_text(json.dumps(mnist))
    monkeypatch.setattr(report, "RESULTS", results)
    report.result.cache_clear()
    try:
        configs = report.render_configs()
        assert "agreement 0.123" in configs and "agreement 0.950" not in configs
        assert "`abc1234`" in report.render_mnist()
    finally:
        report.result.cache_clear()


def test_an_unknown_marker_is_an_error():
    with pytest.raises(KeyError, match="no-such-table"):
        report.render_page("<!-- bench.report: no-such-table -->\n<!-- /bench.report -->\n")


def test_rendering_imports_no_torch():
    code = "import sys; from bench import report; report.render_all(); print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def anchors(page) -> set[str]:
    """The heading anchors GitHub gives a Markdown page (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_picture_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code is not links
    local = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"
    dangling = [t for t in local if "#" in t and t.split("#")[1] not in anchors(page.parent / t.split("#")[0] if t.split("#")[0] else page)]
    assert not dangling, f"{page.name} links to headings that do not exist: {dangling}"


def shell_lines(page) -> list[str]:
    blocks = [body.replace("\\\n", " ") for lang, body in FENCE.findall(page.read_text()) if lang == "bash"]
    return [line for block in blocks for line in block.strip().splitlines()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shown_command_parses(page):
    """Each ``unet-diffusion`` line of a page parses with the real command line, and each ``python -m bench.NAME``
    names a benchmark that exists."""
    import shlex

    from unet_diffusion.cli import build_parser

    parser = build_parser()
    for line in shell_lines(page):
        argv = shlex.split(line, comments=True)
        while argv and "=" in argv[0]:             # environment settings such as UNET_DATA_DIR=...
            argv = argv[1:]
        if argv[:2] == ["python", "-m"]:
            assert (ROOT / f"{argv[2].replace('.', '/')}.py").is_file(), line
        elif argv[:1] == ["unet-diffusion"] and argv[1:] != ["--help"]:
            assert parser.parse_args(argv[1:]).command == argv[1], line
