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
        ("[llm]\ntemperature = nan\n", "[llm] temperature: expected a finite number, got nan"),
        ("[llm]\ntimeout_s = inf\n", "[llm] timeout_s: expected a finite number, got inf"),
        ("[huixiangdou]\ndown_timeout_s = -inf\n", "[huixiangdou] down_timeout_s: expected a finite number"),
        ("[questions]\naspects = ['']\n", "[questions] aspects: expected a non-empty string, got ''"),
        ("[questions]\naspects = ['plot', ' ']\n", "[questions] aspects: expected a non-empty string"),
        ("[questions]\naspects = ['plot', 'cast', 'plot']\n", "[questions] aspects: 'plot' is listed twice"),
        ("[questions]\naspects = []\n", "[questions] aspects: expected at least one"),
        ("[questions]\ntopic = ''\n", "[questions] topic: expected a non-empty string"),
        ("[huixiangdou]\nurls = ['']\n", "[huixiangdou] urls: expected an http:// or https:// URL, got ''"),
        ("[huixiangdou]\nurls = ['127.0.0.1:23333']\n", "[huixiangdou] urls: expected an http:// or https:// URL"),
        ("[huixiangdou]\nurls = ['http://a:1', 'http://a:1']\n", "[huixiangdou] urls: 'http://a:1' is listed twice"),
        ("[llm]\nmodel = ''\n", "[llm] model: expected a non-empty string, got ''"),
        ("[llm]\nbase_url = ''\n", "[llm] base_url: expected an http:// or https:// URL, got ''"),
        ("[llm]\napi_key_env = ''\n", "[llm] api_key_env: expected a non-empty string"),
        ("[pretrain]\nseparators = []\n", "[pretrain] separators: expected at least one entry"),
        ("[pretrain]\npatterns = []\n", "[pretrain] patterns: expected at least one entry"),
        ("[pretrain]\npatterns = ['']\n", "[pretrain] patterns: expected a non-empty string"),
        ("[pretrain]\noutput_name = '../../etc/x.jsonl'\n",
         "[pretrain] output_name: expected a file name inside out_dir (no folders), got '../../etc/x.jsonl'"),
        ("[pretrain]\noutput_name = '..'\n", "[pretrain] output_name: expected a file name inside out_dir"),
        ("[conversations]\nrefusal_patterns = ['ok', '(unclosed']\n",
         "[conversations] refusal_patterns: entry 2, '(unclosed', is not a valid regular expression"),
        ("[conversations]\nstrip_prefixes = ['[a-']\n",
         "[conversations] strip_prefixes: entry 1, '[a-', is not a valid regular expression"),
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


def test_a_separator_list_may_end_with_the_empty_separator(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[pretrain]\nseparators = ['。', '']\n"), environ={})
    assert s.pretrain.separators == ("。", "")
