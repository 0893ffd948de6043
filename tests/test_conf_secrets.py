"""No secret in conf/: credentials come from the environment (``${VAR}``), never a literal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "conf"

# A setting whose name says it holds a credential, set to something other than ${VAR}.
CREDENTIAL_SETTING = re.compile(
    r"(?i)^\s*[\w.\-]*(secret|password|passwd|token|access[._-]?key|api[._-]?key|credential)[\w.\-]*"
    r"\s*[:=\s]\s*(?P<value>\S.*)$"
)
# Literals shaped like well-known credentials, wherever they appear.
KEY_SHAPES = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Databricks token": re.compile(r"\bdapi[0-9a-f]{32}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Azure storage key": re.compile(r"AccountKey=[A-Za-z0-9+/=]{40,}"),
    "long opaque literal": re.compile(r"(?<![\w/.$-])[A-Za-z0-9+/_=-]{40,}(?![\w/.-])"),
}


def leaks(text: str) -> list[str]:
    """Lines of a config file that look like a literal credential, with what they look like."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        setting = CREDENTIAL_SETTING.match(code)
        if setting and not re.fullmatch(r"""["']?\$\{[A-Z_][A-Z0-9_]*(:-[^}]*)?\}["']?""", setting["value"].strip()):
            found.append(f"{number}: credential-like setting with a literal value")
        found += [f"{number}: {name}" for name, shape in KEY_SHAPES.items() if shape.search(line)]
    return found


@pytest.mark.parametrize("path", sorted(p for p in CONF.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_conf_file_holds_no_literal_secret(path):
    assert leaks(path.read_text()) == [], f"{path}: put secrets in the environment and use ${{VAR}}"


@pytest.mark.parametrize("line", [
    "  secret_key: hunter2",
    "spark.hadoop.fs.s3a.secret.key   wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEYabc",
    "aws: {access_key: AKIAIOSFODNN7EXAMPLE}",
    "token = dapi0123456789abcdef0123456789abcdef",
    "-----BEGIN RSA PRIVATE KEY-----",
])
def test_literal_secrets_are_caught(line):
    assert leaks(line)


@pytest.mark.parametrize("line", [
    "  password: ${WAREHOUSE_PASSWORD}",
    "spark.hadoop.fs.s3a.secret.key ${S3_SECRET_KEY:-}",
    "  key: event_id",
    "lakehouse: ${SPARKML_EXT_LAKEHOUSE:-lakehouse}",
    "# spark.authenticate true (secret from the SPARK_AUTHENTICATE_SECRET environment variable)",
    "spark.jars.packages io.delta:delta-spark_4.2_2.13:4.4.0",
])
def test_environment_references_and_plain_settings_pass(line):
    assert leaks(line) == []
