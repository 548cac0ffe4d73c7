"""rlhf.data owns the HH-RLHF, OASST and FineGrainedRLHF formats (W1): the studio's import path and
the CLI's readers give the same prompts and answers for the same shared data files, both parsed
and as stored in (and exported from) a project."""
import gzip
import json

import pytest

from labelapp.formats import exports
from labelapp.formats.labels import MAX_K, parse_labels
from labelapp.services.label_imports import labels_import
from rlhf import data as D
from tests.conftest import make_project
from tests.labelapp.test_label_import import FINEGRAINED, HH, OASST

FILES = [
    ("hh", HH / "helpful-base.test.jsonl.gz"),
    ("hh", HH / "harmless-base.test.jsonl.gz"),
    ("oasst", OASST),
    ("finegrained", FINEGRAINED),
]


def groups(texts: list[str], ranks: list[int], keep: int = MAX_K) -> tuple:
    """Tie groups of texts, best first, of the best `keep` (the studio keeps K ≤ 9)."""
    best = sorted(range(len(texts)), key=lambda i: ranks[i])[:keep]
    return tuple(tuple(sorted(texts[i] for i in best if ranks[i] == r)) for r in sorted({ranks[i] for i in best}))


def cli_rows(fmt: str, path) -> list[tuple]:
    """(prompt turns as JSON, tie groups of answers) from rlhf.data's readers."""
    if fmt == "hh":
        return [(json.dumps(p.prompt), ((p.chosen,), (p.rejected,))) for p in D.read_hh_rlhf(path)]
    rankings = D.read_oasst_rankings(path) if fmt == "oasst" else D.read_finegrained_rankings(path)
    return [(json.dumps(r.prompt), groups(r.completions, r.ranks)) for r in rankings]


def studio_rows(report) -> list[tuple]:
    out = []
    for r in report.rankings:
        turns = r.prompt.turns or [{"role": "user", "content": r.prompt.text}]
        texts = [c.text for c in r.completions]
        out.append((json.dumps(turns), tuple(tuple(sorted(texts[i] for i in g)) for g in r.order)))
    return out


@pytest.mark.parametrize("fmt, path", FILES, ids=lambda x: getattr(x, "name", x))
def test_studio_import_parses_what_the_cli_reads(fmt, path):
    report = parse_labels(path.read_bytes(), fmt=fmt, skip_invalid=True)
    assert not report.errors
    cli = cli_rows(fmt, path)
    assert len(cli) > 100
    assert studio_rows(report) == cli  # the same records kept, the same prompts, answers and order
    if fmt == "finegrained":  # the corrected predictions the studio makes demonstrations of
        records = json.loads(gzip.decompress(path.read_bytes()))
        assert [d.text for d in report.demonstrations] == [c for r in records if (c := D.finegrained_correction(r))]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt, path", FILES, ids=lambda x: getattr(x, "name", x))
def test_what_the_studio_stores_and_exports_is_what_the_cli_reads(fmt, path, tmp_path):
    """Through the database: the studio's rankings export (what its training runs read) of an
    imported file holds the CLI's prompts and answers."""
    if fmt == "finegrained":
        records = json.loads(gzip.decompress(path.read_bytes()))[:60]
        data = json.dumps(records).encode()
    else:
        with gzip.open(path, "rb") as f:
            lines = [f.readline() for _ in range(60 if fmt == "oasst" else 300)]
        data = b"".join(lines)
    project = make_project(k=2, overlap=1)
    labels_import(project=project, data=data, fmt=fmt, skip_invalid=True)
    exported = []
    for raw in b"".join(exports.export_rankings(exports.ExportFilter(project=project))).splitlines():
        row = json.loads(raw)
        text = {c["id"]: c["text"] for c in row["completions"]}
        exported.append((json.dumps(row["prompt"]), tuple(tuple(sorted(text[i] for i in g)) for g in row["order"])))
    sample = tmp_path / ("sample.json" if fmt == "finegrained" else "sample.jsonl")
    sample.write_bytes(data)
    cli = cli_rows(fmt, sample)
    # the export is ordered by task; the same rows, each prompt once per distinct set of answers
    assert sorted(exported) == sorted(dict.fromkeys(cli))

