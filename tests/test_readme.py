"""The README's Python API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under '## {title}'"
    return match.group(1)


def test_readme_starts_with_the_two_setup_commands():
    first = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "instructvla demo" in first[0] and "pip install" in first[0]
    assert first[1].startswith("python -m pytest")


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_section_code("Python API"), "README.md", "exec"), {})
    assert "(16, 7)" in capsys.readouterr().out
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
