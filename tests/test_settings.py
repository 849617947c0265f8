"""Settings: defaults, the shipped file, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import CHINESE_SEPARATORS, Secret, load_settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_file_equals_built_in_defaults_but_for_the_system_prompt() -> None:
    shipped = load_settings(ROOT / "settings.toml", environ={})
    builtin = parse_settings({}, environ={})
    for section in ("paths", "pretrain", "llm", "huixiangdou", "questions", "rag", "run"):
        assert getattr(shipped, section) == getattr(builtin, section), section
    assert shipped.pretrain.separators == CHINESE_SEPARATORS
    assert shipped.conversations.strip_prefixes == builtin.conversations.strip_prefixes
    assert shipped.conversations.refusal_patterns == builtin.conversations.refusal_patterns
    # The shipped file carries the reference assistant's own system prompt.
    assert shipped.conversations.system_prompt.startswith("你是悟了悟了")
    assert builtin.conversations.system_prompt != shipped.conversations.system_prompt


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[pretrain]\nchunk_size = 300\n"), environ={})
    assert s.pretrain.chunk_size == 300
    assert s.pretrain.chunk_overlap == 50
    assert s.paths.out_dir == "out"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("[pretrain]\nchunk_sise = 3\n", "unknown key [pretrain] chunk_sise"),
        ("[pretrain]\nchunk_size = 'big'\n", "[pretrain] chunk_size: expected an integer, got 'big'"),
        ("[pretrain]\nchunk_size = 0\n", "[pretrain] chunk_size: expected a value >= 1"),
        ("[pretrain]\nchunk_size = true\n", "[pretrain] chunk_size: expected an integer"),
        ("[pretrain]\nchunk_size = 100\nchunk_overlap = 100\n", "[pretrain] chunk_overlap"),
        ("[pretrain]\nseparators = ['a', 1]\n", "[pretrain] separators: expected a string"),
        ("[huixiangdou]\nendpoint = 'sse'\n", "[huixiangdou] endpoint: expected 'inference' or 'stream'"),
        ("[huixiangdou]\nurls = []\n", "[huixiangdou] urls"),
        ("[llm]\ntemperature = 3\n", "[llm] temperature: expected a value <= 2"),
        ("[llm]\napi_key = 'sk-x'\n", "unknown key [llm] api_key"),
        ("[conversations]\nmin_turns = 3\nmax_turns = 2\n", "[conversations] min_turns"),
        ("pretrain = 3\n", "[pretrain] must be a table"),
        ("[pretrain\n", "not valid TOML"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_settings_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="nothere.toml: settings file not found"):
        load_settings(tmp_path / "nothere.toml")


def test_float_setting_accepts_integer(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[llm]\ntimeout_s = 30\n"), environ={})
    assert s.llm.timeout_s == 30.0 and isinstance(s.llm.timeout_s, float)


def test_key_comes_from_named_environment_variable_and_never_prints(tmp_path: Path) -> None:
    path = write(tmp_path, "[llm]\napi_key_env = 'MY_KEY'\n")
    s = load_settings(path, environ={"MY_KEY": "sk-secret-123"})
    assert s.llm.api_key.reveal() == "sk-secret-123"
    for text in (repr(s), str(s.llm), f"{s.llm.api_key}", repr(s.llm.api_key)):
        assert "sk-secret-123" not in text
    assert not load_settings(path, environ={}).llm.api_key


def test_secret_is_masked_in_every_rendering() -> None:
    secret = Secret("abc")
    assert "abc" not in f"{secret!s}{secret!r}{secret:>10}"


def test_language_preset_fills_empty_prompts(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[questions]\nlanguage = 'en'\ntopic = 'Tea'\n"), environ={})
    assert "{aspect}" in s.questions.system_prompt and "questions" in s.questions.system_prompt
    assert s.conversations.system_prompt.endswith("helping users learn the stories and culture behind it.")
    assert "Tea" in s.conversations.system_prompt


def test_explicit_prompt_wins_over_preset(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[questions]\nuser_prompt = 'Give {n}'\n"), environ={})
    assert s.questions.user_prompt == "Give {n}"


def test_shipped_file_sets_and_comments_every_key() -> None:
    import dataclasses
    import tomllib

    from pipeline.settings import _INTERNAL, _SECTIONS

    text = (ROOT / "settings.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for section, cls in _SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)} - {k for s, k in _INTERNAL if s == section}
        assert keys == set(data[section]), section
    # Every key line carries a comment, or belongs to a run of lines that a comment opens.
    under_comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("["):
            under_comment = False
        elif stripped.startswith("#"):
            under_comment = True
        elif line[0].isalpha() and "=" in line:
            key = line.split("=")[0].strip()
            assert "#" in line or under_comment, f"{key} has no comment"
