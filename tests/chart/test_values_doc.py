"""Every key of the chart's values.yaml is documented (a helm-docs `# --` comment), and the chart README's values
table is the one those comments make (`python tests/chart/values_doc.py` rewrites it)."""

from __future__ import annotations

import yaml
from values_doc import CHART, read_values, readme_table, table


def test_every_key_has_a_description() -> None:
    values = read_values()
    assert len(values) > 250, "values.yaml was not read"
    undocumented = [f"values.yaml:{value.line} {value.path}" for value in values if not value.description]
    assert not undocumented, "keys without a `# --` comment:\n" + "\n".join(undocumented)


def test_the_readme_table_is_the_one_the_comments_make() -> None:
    rendered = table(read_values())
    assert readme_table((CHART / "README.md").read_text()) == rendered, (
        "charts/searchr1/README.md's values table is out of date: run `python tests/chart/values_doc.py`"
    )


def test_a_key_without_a_comment_is_reported(tmp_path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("# -- documented\na: 1\n# a plain comment\nb:\n  # -- inner\n  c: x\nd: [1]\n")
    found = {value.path: value for value in read_values(values)}
    assert [(v.description, v.leaf) for v in found.values()] == [
        ("documented", True), ("", False), ("inner", True), ("", True)
    ]  # fmt: skip
    assert (found["b.c"].default, found["d"].type) == ('"x"', "list")


def test_the_chart_lists_the_images_its_defaults_run() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    listed = [entry["image"] for entry in yaml.safe_load(chart["annotations"]["artifacthub.io/images"])]
    expected = [
        f"{values['image']['repository']}:{chart['appVersion']}",
        f"{values['gpuImage']['repository']}:{chart['appVersion']}",
        f"{values['qdrant']['image']['repository']}:{values['qdrant']['image']['tag']}",
        f"{values['redis']['image']['repository']}:{values['redis']['image']['tag']}",
    ]
    assert listed == expected
