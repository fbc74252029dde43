"""Who the learner is, across reloads and tabs: the cookie fallback and the script that writes it."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from course.session import COOKIE, DEFAULT_LEARNER, MAX_LEARNER_LEN, name_from_cookie, remember_script


def test_the_url_wins_over_the_cookie():
    assert name_from_cookie({COOKIE: "Ada%20L"}, {}) == "Ada L"
    assert name_from_cookie({COOKIE: "Ada%20L"}, {"learner": "Bob"}) is None
    assert name_from_cookie({}, {}) is None
    assert name_from_cookie({COOKIE: DEFAULT_LEARNER}, {}) is None
    assert name_from_cookie({COOKIE: "%0A%20"}, {}) is None


def test_a_cookie_name_is_cleaned_and_capped():
    assert name_from_cookie({COOKIE: "a%09%09b" + "x" * 100}, {}) == ("a b" + "x" * 100)[:MAX_LEARNER_LEN]


def test_the_cookie_script_cannot_be_broken_out_of():
    name = 'Ada </script><img src=x onerror=alert(1)> & "quotes"'
    script = remember_script(name)
    body = script[len("<script>"):-len("</script>")]
    assert "<" not in body and ">" not in body and "&" not in body.replace("\\u0026", "")
    literal = re.search(r"encodeURIComponent\((\".*\")\)", body).group(1)
    assert json.loads(literal) == name  # the name itself reaches the cookie unchanged
    assert "max-age=0" in remember_script(DEFAULT_LEARNER) and "max-age=0" not in script


def test_learners_see_no_developer_toolbar():
    config = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "viewer"  # hides Deploy, rerun and clear cache
