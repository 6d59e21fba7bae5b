"""``factscale config show run|sweep|corpus``: every field with its default and its docstring (read from
where the field is declared), as commented YAML; and the generated reference page docs/configuration.md."""

from __future__ import annotations

from factscale.configio import commented_yaml, describe


def kinds() -> dict:
    """Config kind -> (dataclass, what it configures, values a file must give)."""
    from factscale.corpus.spec import CorpusSpec
    from factscale.corpus.synthetic import KINDS
    from factscale.launch.spec import SweepSpec
    from factscale.training.config import RunConfig

    out = {
        "run": (RunConfig, "one run: `factscale train FILE [key=value ...]`, a sweep's `base`",
                {"corpus.path": "corpora/NAME"}),
        "sweep": (SweepSpec, "a sweep file: `factscale sweep plan|launch|status FILE`", {"name": "NAME",
                                                                                           "runs_dir": "runs/NAME"}),
        "corpus": (CorpusSpec, "a corpus recipe: the flags of `factscale corpus build`, a sweep's `corpus_build`",
                   {"synthetic": {}}),
    }
    for kind, (cls, _) in KINDS.items():
        out[f"synthetic-{kind}"] = (cls, f"the `synthetic` mapping of a corpus recipe with `kind: {kind}`", {})
    return out


def show(kind: str) -> str:
    cls, what, required = kinds()[kind]
    return f"# {kind}: {what}\n# every field, its default and what it means\n" + commented_yaml(cls, required)


def reference_markdown() -> str:
    """docs/configuration.md (a test checks the committed page equals this)."""
    parts = ["# Configuration reference", "",
             "Generated from the docstrings where each field is declared (`factscale config show KIND` prints the "
             "same as commented YAML); a test fails when this page and the code disagree. Regenerate with "
             "`factscale config reference > docs/configuration.md`.", ""]
    for kind, (cls, what, _) in kinds().items():
        parts += [f"## {kind}", "", f"{what[0].upper()}{what[1:]} (`{cls.__module__}.{cls.__name__}`).", "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for d in describe(cls):
            doc = " ".join(d["doc"].split()).replace("|", "\\|")
            default = "" if d["default"] is None else f"`{_short(d['default'])}`"
            parts.append(f"| `{d['key']}` | {d['type'].replace('|', '&#124;')} | {default} | {doc} |")
        parts.append("")
    return "\n".join(parts)


def _short(value) -> str:
    from factscale.configio import yaml_value

    return yaml_value(value).replace("|", "\\|")


def add_parser(sub) -> None:
    c = sub.add_parser("config", help="print every config field with its default and meaning")
    c.add_argument("action", choices=["show", "reference"], help="show KIND: commented YAML; reference: the docs page")
    c.add_argument("kind", nargs="?", help="run | sweep | corpus | synthetic-facts | synthetic-bios | "
                   "synthetic-random-sequences")
    c.set_defaults(fn=cmd_config)


def cmd_config(a) -> None:
    from factscale.errors import ConfigError

    if a.action == "reference":
        print(reference_markdown(), end="")
        return
    if a.kind not in kinds():
        raise ConfigError(f"config show {a.kind or ''}: allowed kinds: {list(kinds())}")
    print(show(a.kind), end="")
