"""The edge's deployment files (issue 19 section 2): only /webhooks published, the admin port
reachable from monitoring only, descriptor limits in the unit."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from outbox.config_loader import load_settings

KUBERNETES = Path(__file__).parents[2] / "deploy" / "kubernetes"


def test_the_ingress_publishes_only_the_webhooks() -> None:
    (ingress,) = yaml.safe_load_all((KUBERNETES / "ingress.example.yaml").read_text())
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/webhooks", "Prefix")]


def test_the_network_policy_matches_the_toml_it_documents(tmp_path: Path) -> None:
    text = (KUBERNETES / "networkpolicy.yaml").read_text()
    (policy,) = yaml.safe_load_all(text)
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    snippet = "\n".join(
        line.removeprefix("#   ").split("#")[0]
        for line in text.splitlines()
        if line.startswith("#   ")
    )
    config = tmp_path / "outbox.toml"
    config.write_text('database_url = "postgresql://u@h/db"\n' + snippet + """
[[channels]]
id = "a"
dialect = "cloud"
base_url = "https://waba-v2.360dialog.io"
api_key_env = "K"
""")  # fmt: skip
    http = load_settings(config, {"K": "key"}).http
    admin_port = int(http.admin_listen.rsplit(":", 1)[1])
    assert ports == {http.port, admin_port}


def test_the_unit_raises_the_descriptor_limit() -> None:
    unit = (Path(__file__).parents[2] / "deploy" / "outbox.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)
    assert match is not None
    assert int(match[1]) >= 65536
