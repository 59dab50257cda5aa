"""The public API, the registries that drive the CLI, and the layering of the package."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import aevlp
from aevlp.cli import cli
from aevlp.errors import ConfigError
from aevlp.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


def test_api_doc_example_runs():
    doc = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/api.md has no python example"
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), {})


def test_every_documented_name_exists():
    doc = (ROOT / "docs" / "api.md").read_text()
    names = set(re.findall(r"`aevlp\.(\w+)", doc))
    assert names and names <= set(aevlp.__all__), names - set(aevlp.__all__)
    for name in set(aevlp.__all__) - {"__version__"}:  # each lazy name is the object of the module it names
        module = __import__(aevlp._API[name], fromlist=[name])
        assert getattr(aevlp, name) is getattr(module, name), name


def test_help_lists_the_api_and_import_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import aevlp, sys; help(aevlp); print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("run_pseudolabel", "run_train", "build_loss", "Cache", "mean_average_precision"):
        assert name in out
    cheap = subprocess.run([sys.executable, "-c", "import aevlp, sys; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert cheap == "False"


def test_registry_refuses_duplicates_and_suggests():
    reg = Registry("widget")
    reg.register("alpha", 1, aliases=("a",))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("other", 3, aliases=("A",))
    assert reg.get("A") == 1 and reg.names() == ["alpha"]
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        reg.get("alpah")


def test_a_registered_loss_appears_in_train_help_and_is_accepted():
    from aevlp.losses import LOSSES, LossSpec, an_loss
    assert "zz-new-loss" not in CliRunner().invoke(cli, ["train", "--help"]).output
    LOSSES.register("zz-new-loss", LossSpec(an_loss, source="test"))
    try:
        out = CliRunner().invoke(cli, ["train", "--help"]).output
        assert "zz-new-loss" in out
        r = CliRunner().invoke(cli, ["train", "--loss", "zz-new-los", "--pseudo", "x.h5"])
        assert r.exit_code == 2 and "did you mean 'zz-new-loss'" in r.output
    finally:
        LOSSES.unregister("zz-new-loss")
    assert "zz-new-loss" not in CliRunner().invoke(cli, ["train", "--help"]).output


def test_cli_choices_come_from_registries():
    from aevlp.data.registry import DATASETS
    from aevlp.stage_two.models import BACKBONES
    out = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert "[" + "|".join(BACKBONES.names()) + "]" in out
    assert "[" + "|".join(DATASETS.names()) + "]" in out


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aevlp"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("aevlp"))
    return out


def is_cli(module: str) -> bool:
    return module == "aevlp.cli" or module.startswith("aevlp.cli.")


def test_no_import_cycles_and_layers_point_one_way():
    modules = {}
    for p in (ROOT / "aevlp").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = p
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, "import cycle: " + " -> ".join(stack + [m, t])
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [])
    # the data layer and the leaf modules never reach up into the stages or the CLI
    for low in ("aevlp.data.layout", "aevlp.imaging", "aevlp.device", "aevlp.registry", "aevlp.errors"):
        assert not any(t.startswith(("aevlp.stage_one", "aevlp.stage_two", "aevlp.tools")) or is_cli(t)
                       for t in graph[low]), low
    # the layout says the architecture: stage one never reaches into stage two, and neither into the tools
    for m in graph:
        if m.startswith("aevlp.stage_one"):
            assert not any(t.startswith(("aevlp.stage_two", "aevlp.tools")) for t in graph[m]), (m, graph[m])
        if m.startswith("aevlp.stage_two"):
            assert not any(t.startswith("aevlp.tools") for t in graph[m]), (m, graph[m])
    # only the CLI package (and `python -m aevlp`) imports aevlp.cli
    assert all(not any(is_cli(t) for t in graph[m]) for m in graph if not is_cli(m) and m != "aevlp.__main__")
    assert all("aevlp.cli" not in graph[m] for m in graph if m.startswith("aevlp.cli."))  # no back-arrow


def test_functions_and_modules_stay_readable():
    long = []
    for p in (ROOT / "aevlp").rglob("*.py"):
        src = p.read_text()
        assert len(src.splitlines()) <= 420, f"{p} has {len(src.splitlines())} lines"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 65:
                long.append(f"{p.name}:{node.name}")
    assert not long, long
