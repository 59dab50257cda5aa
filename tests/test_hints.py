"""Every message and hint the CLI can print names flags that exist on the command printing it."""
import ast
import re
from pathlib import Path

import click
import pytest
from conftest import invoke

from aevlp.cli import cli
from aevlp.cli.hints import SWAPS, command_flags, flag_keys, for_command
from aevlp.cli.setting_option import SettingOption, declaration, flags_of
from aevlp.errors import MARKER, flag
from aevlp.settings import SECTIONS, declared

ROOT = Path(__file__).resolve().parent.parent
ERRORS = {"AevlpError", "DataError", "ConfigError", "BadParameter", "warning"}
HINT_NAMES = {"hint", "fix", "RECOMPUTE"}

# The commands that run each library module whose messages name flags (a new such module must be listed).
EVERY_CONFIG = ["pseudolabel", "train", "run", "bench", "cache clean"]
MODULE_COMMANDS = {
    "tools/report.py": ["report"], "stage_two/run_folder.py": ["train"],
    "cache/export.py": ["cache export"],  # (the gallery has --round too)
    "cache/schema.py": ["pseudolabel", "run", "bench", "cache ls", "cache inspect", "cache verify", "train"],
    "cache/reader.py": ["train", "run", "cache inspect", "cache export", "cache gallery"],
    "cache/reader.py:check_matches": ["train", "run"],  # a function's own list, where it is narrower
    "cache/reader.py:aligned_config": ["train"], "cache/reader.py:check_images": ["train", "run"],
    "stage_one/pseudolabel.py": ["pseudolabel", "run"],  # (bench and demo recompute a stale cache themselves)
    "cache/writer.py": ["pseudolabel", "run"],  # check_disk: before stage one writes
    "config.py": ["pseudolabel", "train", "run", "bench"],  # its --set errors come from --set itself
    "settings.py": EVERY_CONFIG, "losses/ll.py": ["train", "run", "bench"], "losses/gr.py": ["train"],
    "stage_two/plan.py": ["train", "run", "bench"], "stage_two/clip_student.py": ["train", "run", "bench"],
    "stage_one/clip_source.py": ["pseudolabel", "run", "bench", "clip info", "demo"],
    "stage_one/clip.py": ["pseudolabel", "run", "bench", "predict", "demo"],
    "stage_two/checkpoint.py": ["train"],
    "data/cub.py": ["data prepare cub"], "data/coco.py": ["data prepare coco"], "data/voc.py": ["data prepare voc"],
    "data/fashion.py": ["demo", "data prepare fashion-mosaic"],
    "data/layout.py": ["pseudolabel", "train", "run", "bench", "data info", "eval"],
    "data/table.py": ["data prepare table"], "data/registry.py": ["pseudolabel", "train", "data info", "run"],
    "stage_two/evaluate.py": ["eval", "predict"],
    "stage_two/models.py": ["train", "run", "bench", "predict", "eval", "demo"],
    "stage_one/shards.py": ["pseudolabel"],
    "distributed.py": ["pseudolabel"], "device.py": ["pseudolabel", "train", "run", "bench"],
    "stage_two/train.py": ["train", "run", "bench"], "stage_two/inputs.py": ["train", "run", "bench"],
    "stage_two/labeler.py": ["train", "run", "bench"], "cache/sources.py": ["train", "run", "bench", "refine"],
    "stage_two/thresholds.py": ["train", "run", "bench", "cache thresholds"], "stage_two/refine.py": ["refine"],
    "cache/interchange.py": ["cache export"], "data/reviewed.py": ["data prepare table"],
    "losses/latent.py": ["train", "run", "bench"], "losses/recipes.py": ["train", "run", "bench"],
}


def commands(group=cli, path="aevlp"):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{path} {name}")
        else:
            yield f"{path} {name}"[len("aevlp "):], cmd


COMMANDS = dict(commands())


def _marker(node) -> str | None:
    """The text of a `flag(...)` call in a message (its value "X" where it is not a constant)."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "flag":
        args = [a.value if isinstance(a, ast.Constant) else "X" for a in node.args]
        return flag(*args)
    return None


def _text(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else (_marker(v.value) or "X") for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left) or _marker(node.left), _text(node.right) or _marker(node.right)
        return left + right if left is not None and right is not None else None
    return None


def printed_strings(path: Path) -> list[tuple[str, str]]:
    """(function, text) of the messages, hints and warnings a module raises or logs ("" at module level)."""
    out = []
    tree = ast.parse(path.read_text())
    owner = {id(n): f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Call):
            f = node.func
            if (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")) in ERRORS:
                texts = [_text(a) for a in [*node.args, *(k.value for k in node.keywords)]]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") in HINT_NAMES for t in node.targets):
            texts = [_text(node.value)]
        out += [(owner.get(id(node), ""), t) for t in texts if t and ("--" in t or MARKER.search(t))]
    return out


def own_command_spans(text: str):
    """(command, its arguments) for every `aevlp CMD ...` in backticks."""
    for span in re.findall(r"`aevlp ([^`]*)`", text):
        words = span.split()
        for n in (3, 2, 1):
            if " ".join(words[:n]) in COMMANDS:
                yield " ".join(words[:n]), " ".join(words[n:])
                break


def flags_in(text: str) -> set[str]:
    text = re.sub(r"`aevlp [^`]*`", "", text)
    return set(re.findall(r"(?<![\w`-])--[a-z][a-z-]*", text))


def test_the_flag_table_names_real_flags_and_settings():
    keys = {f"{s}.{k}" for s, c in SECTIONS.items() for k in declared(c)}
    table = flag_keys(COMMANDS.values())
    assert table["--weights"] == ("train.weights",) and table["--pseudo"] == ("cache.path",)
    assert table["--device"] == ("clip.device", "train.device")  # pseudolabel's and train's
    assert set().union(*table.values()) <= keys
    for name, where in SWAPS.items():
        for path, spelling in where.items():
            assert spelling.split()[0] in command_flags(COMMANDS[path.removeprefix("aevlp ")]), (name, path)


def test_library_messages_name_settings_not_flags():
    """A setting's flag in a library message is written as flag("section.key", ...): only the command that prints
    it knows how it is spelled there (a literal one is allowed inside a backticked `aevlp CMD ...`)."""
    setting_flags = set(flag_keys(COMMANDS.values()))
    for path in (ROOT / "aevlp").rglob("*.py"):
        rel = path.relative_to(ROOT / "aevlp").as_posix()
        if rel.startswith("cli/"):
            continue
        for _, text in printed_strings(path):
            literal = flags_in(MARKER.sub("", text)) & setting_flags
            assert not literal, f"{rel}: {literal} written as a flag in: {text}"


def test_every_library_message_names_flags_its_commands_have():
    found = {}
    for path in (ROOT / "aevlp").rglob("*.py"):
        rel = path.relative_to(ROOT / "aevlp").as_posix()
        if rel.startswith("cli/") or not (texts := printed_strings(path)):
            continue
        assert rel in MODULE_COMMANDS, f"{rel} prints flags: list the commands that run it in MODULE_COMMANDS"
        for function, text in texts:
            for name in MODULE_COMMANDS.get(f"{rel}:{function}", MODULE_COMMANDS[rel]):
                cmd = COMMANDS[name]
                for kind in ("message", "hint"):
                    missing = flags_in(for_command(text, cmd, f"aevlp {name}", kind)) - command_flags(cmd)
                    assert not missing, f"{rel}: `aevlp {name}` would print {missing} in: {text}"
                found[rel] = len(texts)
    assert len(found) >= 20  # the walk did reach the library's messages


def test_every_command_named_in_backticks_has_the_flags_given_there():
    for path in (ROOT / "aevlp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            text = _text(node)
            for name, args in own_command_spans(text or ""):
                missing = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", args)) - command_flags(COMMANDS[name])
                assert not missing, f"{path.name}: `aevlp {name} {args}` has no {missing}"


def test_cli_module_messages_name_their_own_commands_flags():
    for path in (ROOT / "aevlp" / "cli").glob("*.py"):
        mine = [c for n, c in COMMANDS.items() if c.callback and c.callback.__module__.endswith("." + path.stem)]
        mine = mine or list(COMMANDS.values())  # common.py, group.py: the flags of some command
        for _, text in printed_strings(path):
            flags = flags_in(text)
            assert all(any(f in command_flags(c) for c in mine) for f in flags), (path.name, text)


def test_run_offline_hint_names_set_not_a_missing_flag(tmp_path, monkeypatch):
    """The case users met: `aevlp run` offline could not fetch ImageNet weights and was told `--weights`."""
    import torchvision

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1, "get_state_dict", offline)
    from aevlp.stage_two.models import build_model
    with pytest.raises(Exception) as e:
        build_model("resnet50", 3, weights="imagenet")
    text = f"{e.value.raw_message}\n{e.value.raw_hint}"
    assert "train.weights = none" in str(e.value) and "--weights" not in str(e.value)  # the API reads the setting
    run = for_command(text, COMMANDS["run"], "aevlp run")
    assert "--set train.weights=none" in run and "--weights" not in run.replace("train.weights", "")
    assert "--weights none" in for_command(text, COMMANDS["train"], "aevlp train")
    r = invoke("run", "nope-pipeline", "--set", "damp.temperature=-1")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_a_bench_method_name_as_loss_gets_the_flags_that_make_it():
    r = invoke("train", "--loss", "gpr-damp", "--pseudo", "x.h5")
    assert r.exit_code == 2 and "pass --loss gpr --damp-source damp" in r.output, r.output
    r = invoke("train", "--loss", "full-labels", "--pseudo", "x.h5")
    assert "pass --loss bce-full --labels full" in r.output


def test_progress_written_to_a_pipe_is_a_line_every_few_percent(capsys):
    from aevlp.progress import bar
    for _ in bar(range(600), desc="pretrain", unit="step"):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 20 <= len(lines) <= 22, lines
    assert lines[0].startswith("pretrain:   0%") and lines[-1].startswith("pretrain: 100%")


def test_setting_flags_are_their_declarations():
    """Each setting flag takes the declared choices and shows the declared help; no other option restates a
    declaration's choices or help (so a setting is described in one place, aevlp/settings.py)."""
    docs = {f"{s}.{k}": f.metadata["doc"] for s, c in SECTIONS.items() for k, f in declared(c).items()}
    choice_lists = {tuple(f.metadata["choices"]) for c in SECTIONS.values() for f in declared(c).values()
                    if f.metadata["choices"]}
    seen = 0
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if isinstance(p, SettingOption):
                d = declaration(p.setting)
                if d.metadata["choices"]:
                    assert tuple(p.type.choices) == d.metadata["choices"], (name, p.setting)
                assert p.default is None and p.help.lower().startswith(docs[p.setting].lower()), (name, p.setting)
                seen += 1
            elif isinstance(p, click.Option):
                if isinstance(p.type, click.Choice) and not hasattr(p.type, "registry"):
                    assert tuple(p.type.choices) not in choice_lists, (name, p.opts)
                assert not any(doc.lower() in (p.help or "").lower() for doc in docs.values()), (name, p.opts)
    assert seen >= 30


def test_stage_commands_take_their_settings_as_setting_options():
    """`train` and `pseudolabel`: an option spelled like a key of a section the stage reads is that setting's."""
    stages = {"train": ("train", "loss", "damp"), "pseudolabel": ("clip", "views", "cache", "text")}
    for name, sections in stages.items():
        keys = {"--" + k.replace("_", "-"): f"{s}.{k}" for s in sections for k in declared(SECTIONS[s])}
        keys.pop("--config", None)  # the pipeline file (clip.config is --clip-config)
        own = flags_of(COMMANDS[name])
        for p in COMMANDS[name].params:
            for opt in getattr(p, "opts", ()):
                if opt in keys and not isinstance(p, SettingOption):
                    raise AssertionError(f"aevlp {name} {opt} restates {keys[opt]}: make it a setting_option")
        assert own.get("train.lr" if name == "train" else "views.grid") in ("--lr", "--grid")


def test_the_groups_own_flags_are_the_ones_every_command_takes():
    from aevlp.cli import cli
    from aevlp.cli.hints import ROOT_FLAGS

    assert ROOT_FLAGS == {o for p in cli.params for o in p.opts}
