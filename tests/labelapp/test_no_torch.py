"""The web process stays light (W5): importing every labelapp module — models, views, API,
services, selectors, formats, management commands — and the URLconf, after django.setup(), loads
none of torch, transformers, trl or peft; nor does rlhf.data, which labelapp's imports build on."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "trl", "peft")

PROBE = """
import importlib, json, pkgutil, sys
import django
django.setup()
import labelapp, rlhf.data
from django.urls import get_resolver
names = [m.name for m in pkgutil.walk_packages(labelapp.__path__, "labelapp.")]
for name in names:
    importlib.import_module(name)
get_resolver().url_patterns  # imports every view module the URLconf names
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"modules": names, "heavy": heavy}))
"""


def test_labelapp_never_imports_torch_transformers_trl_or_peft():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    names = set(out["modules"])
    # the probe really walked the app: views, API, services, formats and the management commands
    assert {"labelapp.pages.annotate", "labelapp.api.views", "labelapp.services.queue", "labelapp.formats.labels",
            "labelapp.management.commands.labels_import"} <= names
    assert out["heavy"] == [], f"labelapp imported {out['heavy']}"


def test_the_probe_would_see_torch():
    """The check can fail: a module that imports torch shows up in the probe's answer."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    code = PROBE.replace("heavy = sorted", "import torch  # noqa\nheavy = sorted")
    run = subprocess.run([sys.executable, "-c", code, json.dumps(HEAVY)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert json.loads(run.stdout.strip().splitlines()[-1])["heavy"] == ["torch"]
