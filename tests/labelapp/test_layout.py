"""labelapp keeps one home per kind of code (docs/ARCHITECTURE.md, "labelapp"): nothing new at the top
level beside the cross-cutting modules, and every file the map names exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "labelapp"
TOP_LEVEL = {"__init__", "admin", "apps", "cache", "middleware", "round_settings", "throttle"}
HOMES = {"models", "services", "selectors", "formats", "analysis", "pages", "api"}


def test_labelapp_top_level_holds_only_the_cross_cutting_modules():
    modules = {p.stem for p in APP.glob("*.py")}
    assert modules == TOP_LEVEL, f"put {sorted(modules - TOP_LEVEL)} in one of {sorted(HOMES)}"
    for home in HOMES:
        assert (APP / home / "__init__.py").is_file(), home


def test_every_file_the_architecture_map_names_exists():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text[text.index("## labelapp\n"):text.index("## The queue")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = []
    for row in rows:
        home = re.match(r"\| `([\w/ ]+?)/?` \|", row)
        for name in re.findall(r"`([\w/]+\.py)`", row):
            named.append(name if "/" in name else f"{home.group(1)}/{name}" if home else name)
    assert len(named) > 20
    missing = [n for n in named if not (APP / n).is_file()]
    assert not missing, f"docs/ARCHITECTURE.md names files labelapp does not have: {missing}"
