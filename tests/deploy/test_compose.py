"""compose.yaml: valid against the Compose Specification's JSON schema (compose-spec.json
beside this file, from the compose-spec project), every command a `retl` subcommand the
README documents with options it takes, a health check on every long-running service,
nothing secret written in, and — where docker-compose is installed — accepted by it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "RETL_SECRET_KEY")
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(text: str) -> str:
    """A value as compose reads it with no variable set: defaults taken, required ones filled."""
    return _VARIABLE.sub(lambda m: m.group(3) if m.group(2) == "-" else "set", text)


def documented_commands() -> set[str]:
    """`retl X` subcommands named in the first column of the README's Commands table."""
    readme = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `retl ([a-z-]+)", readme, re.MULTILINE))


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))

    assert [error.message for error in validator.iter_errors(compose())] == []
    misspelt = {**compose(), "services": {"api": {"image": "retl", "helthcheck": {}}}}
    assert not validator.is_valid(misspelt)  # the schema refuses what compose would


def test_every_command_is_a_documented_retl_subcommand_with_options_it_takes() -> None:
    services = compose()["services"]
    retl_services = {name: s for name, s in services.items() if s.get("command", [""])[0] == "retl"}

    assert set(retl_services) == {"migrate", "api", "worker", "beat"}
    for name, service in retl_services.items():
        subcommand, *args = [interpolate(str(part)) for part in service["command"][1:]]
        assert subcommand in documented_commands(), f"{name}: retl {subcommand} is not in the README"
        command = cli.commands[subcommand]
        # Parses the options as `retl` would, without running the command.
        command.make_context(subcommand, list(args))


def test_every_long_running_service_has_a_health_check_and_one_beat_runs() -> None:
    services = compose()["services"]

    for name in ("postgres", "redis", "api", "worker", "beat"):
        assert services[name]["healthcheck"]["test"], name
    assert "replicas" not in services["beat"].get("deploy", {})
    # Workers scale with --scale: no fixed host port or container name.
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]


def test_no_secret_is_written_into_the_compose_file_or_the_image() -> None:
    text = COMPOSE.read_text()
    for name in REQUIRED_SECRETS:
        references = re.findall(rf"\$\{{{name}(:?[-?])?[^}}]*\}}", text)
        assert references and all(ref == ":?" for ref in references), name
    assert not re.search(r"postgresql://\w+:(?!\$\{)", text), "a literal database password"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(PASSWORD|SECRET|TOKEN|KEY)\s*=", dockerfile, re.IGNORECASE)


def test_the_egress_allow_list_is_documented_where_it_is_set() -> None:
    text = COMPOSE.read_text()

    assert "RETL_EGRESS_ALLOW: ${RETL_EGRESS_ALLOW:-}" in text
    assert re.search(r"#.*comma-separated", text)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (apt-get install docker-compose)")
def test_docker_compose_accepts_the_file_and_refuses_to_start_without_its_secrets(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    args = ["docker-compose", "-f", str(COMPOSE), "--project-directory", str(tmp_path),
            "config", "-q"]

    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    accepted = subprocess.run(args, capture_output=True, text=True, timeout=60,
                              env={**env, "POSTGRES_PASSWORD": "pw", "RETL_SECRET_KEY": "k"})

    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr + refused.stdout
    assert accepted.returncode == 0, accepted.stderr
