"""The generated secret key: one key however many processes start at once, private to its owner."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import secrets
from shared.settings import get_settings


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.delenv("RETL_SECRET_KEY", raising=False)
    monkeypatch.setenv("RETL_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_concurrent_first_uses_agree_on_one_key(fresh_home):
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda i: secrets.encrypt_config({"n": i}), range(64)))
    assert [secrets.decrypt_config(t)["n"] for t in tokens] == list(range(64))


def test_the_key_file_is_readable_by_its_owner_only(fresh_home):
    secrets.encrypt_config({})
    mode = stat.S_IMODE(os.stat(fresh_home / "secret.key").st_mode)
    assert mode == 0o600
