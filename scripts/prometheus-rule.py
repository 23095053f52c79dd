#!/usr/bin/env python3
"""Writes k8s/components/monitoring/prometheusrule.yaml from prometheus/alerts.yml, so the rules
Prometheus Operator loads are exactly the ones promtool tests. `make test` fails when they differ;
run `python3 scripts/prometheus-rule.py` after editing the alerts."""
import pathlib

import yaml

def block_strings(dumper, value):
    """Multi-line strings (the PromQL expressions) as readable `|` blocks."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


yaml.SafeDumper.add_representer(str, block_strings)
root = pathlib.Path(__file__).resolve().parent.parent
rules = yaml.safe_load((root / "prometheus/alerts.yml").read_text())
resource = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "ordermesh", "namespace": "ordermesh", "labels": {"app.kubernetes.io/part-of": "ordermesh"}},
    "spec": rules,
}
header = "# Generated from prometheus/alerts.yml by scripts/prometheus-rule.py; do not edit by hand.\n"
(root / "k8s/components/monitoring/prometheusrule.yaml").write_text(
    header + yaml.safe_dump(resource, sort_keys=False, width=100)
)
